/*
 * Fusion of several models' next-token distributions, over the full
 * vocabulary. Pure: plain arrays in, plain arrays out.
 */
#include "internal.h"
#include "fastmath.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

const char *sm_fusion_mode_name(sm_fusion_mode mode) {
    static const char *names[] = {"confidence", "average",     "voting",    "harmony",    "adaptive",
                                  "democratic", "round_robin", "reference", "contrastive"};
    return (unsigned)mode < sizeof names / sizeof *names ? names[mode] : "unknown";
}

bool sm_fusion_mode_from_name(const char *name, sm_fusion_mode *mode) {
    for (int m = SM_FUSION_CONFIDENCE; m <= SM_FUSION_CONTRASTIVE; m++) {
        if (strcmp(name, sm_fusion_mode_name((sm_fusion_mode)m)) == 0 ||
            (m == SM_FUSION_ROUND_ROBIN && strcmp(name, "round-robin") == 0)) {
            *mode = (sm_fusion_mode)m;
            return true;
        }
    }
    return false;
}

sm_status sm_fusion_params_validate(const sm_fusion_params *fp, int32_t n_models, char *msg, size_t size) {
    if ((unsigned)fp->mode > SM_FUSION_CONTRASTIVE) {
        snprintf(msg, size, "unknown fusion mode %d", fp->mode);
        return SM_ERR_INVALID_ARGUMENT;
    }
    if (fp->n_weights != 0 && fp->n_weights != n_models) {
        snprintf(msg, size, "%d fusion weights given for %d models", fp->n_weights, n_models);
        return SM_ERR_INVALID_ARGUMENT;
    }
    float sum = 0.0f;
    for (int32_t m = 0; m < fp->n_weights; m++) {
        if (!(fp->weights[m] >= 0.0f) || !isfinite(fp->weights[m])) {
            snprintf(msg, size, "fusion weight %d is %g: weights must be finite and >= 0", m, fp->weights[m]);
            return SM_ERR_INVALID_ARGUMENT;
        }
        sum += fp->weights[m];
    }
    if (fp->n_weights > 0 && !(sum > 0.0f)) {
        snprintf(msg, size, "fusion weights must not all be 0");
        return SM_ERR_INVALID_ARGUMENT;
    }
    if (fp->turn < 1) {
        snprintf(msg, size, "fusion turn must be >= 1 (got %d)", fp->turn);
        return SM_ERR_INVALID_ARGUMENT;
    }
    if (!(fp->alpha >= 0.0f && fp->alpha <= 1.0f) || !(fp->beta >= 0.0f) || !isfinite(fp->beta)) {
        snprintf(msg, size, "contrastive alpha must be in [0, 1] and beta >= 0 (got %g, %g)", fp->alpha, fp->beta);
        return SM_ERR_INVALID_ARGUMENT;
    }
    if (fp->reference < 0 || fp->reference >= n_models) {
        snprintf(msg, size, "fusion reference %d is not a model (0 to %d)", fp->reference, n_models - 1);
        return SM_ERR_INVALID_ARGUMENT;
    }
    if (fp->mode == SM_FUSION_CONTRASTIVE && n_models < 2) {
        snprintf(msg, size, "contrastive fusion needs two models (expert, amateur)");
        return SM_ERR_INVALID_ARGUMENT;
    }
    return SM_OK;
}

void sm_model_dist_summarize(const float *logits, int32_t n_vocab, sm_model_dist *out) {
    sm_token top[3] = {-1, -1, -1};
    float topv[3] = {-INFINITY, -INFINITY, -INFINITY};
    float max = -INFINITY;
    for (int32_t t = 0; t < n_vocab; t++) {
        float x = logits[t];
        if (x > max) max = x;
        if (x <= topv[2]) continue;
        int j = 2;
        while (j > 0 && topv[j - 1] < x) {
            topv[j] = topv[j - 1];
            top[j] = top[j - 1];
            j--;
        }
        topv[j] = x;
        top[j] = t;
    }
    float lanes[SM_LANES] = {0};
    const int32_t full = n_vocab - n_vocab % SM_LANES;
    for (int32_t t = 0; t < n_vocab; t += SM_LANES) {
        const int32_t width = t < full ? SM_LANES : n_vocab - full;
        for (int32_t k = 0; k < width; k++) lanes[k] += sm_exp_nonpositive(logits[t + k] - max);
    }
    out->logits = logits;
    out->log_z = max + logf(sm_lane_sum(lanes));
    out->max_p = expf(max - out->log_z);
    memcpy(out->top, top, sizeof top);
}

static float prob(const sm_model_dist *d, sm_token t) { return expf(d->logits[t] - d->log_z); }

/* out = ln(sum_m c_m p_m / sum_m c_m) over the models with c_m > 0: the
 * sum is built in out, one model at a time, so every pass vectorises. */
static void mixture(const sm_model_dist *d, const float *coef, int32_t n_models, int32_t n_vocab, float *out) {
    float total = 0.0f;
    for (int32_t m = 0; m < n_models; m++) total += coef[m];
    for (int32_t t = 0; t < n_vocab; t++) out[t] = 0.0f;
    for (int32_t m = 0; m < n_models; m++) {
        if (!(coef[m] > 0.0f)) continue;
        const float c = coef[m] / total, *l = d[m].logits, lz = d[m].log_z;
        for (int32_t t = 0; t < n_vocab; t++) out[t] += c * sm_exp_nonpositive(l[t] - lz);
    }
    /* Every weighted model gives each token at least ~1e-38: p > 0. */
    for (int32_t t = 0; t < n_vocab; t++) out[t] = sm_log_positive(out[t]);
}

static void copy_model(const sm_model_dist *d, int32_t n_vocab, float *out) {
    for (int32_t t = 0; t < n_vocab; t++) out[t] = d->logits[t] - d->log_z;
}

void sm_fuse(const sm_fusion_params *fp, const sm_model_dist *d, int32_t n_models, int32_t n_vocab,
             int32_t index, float *out, bool *participating) {
    float w[SM_MAX_MODELS], coef[SM_MAX_MODELS];
    int32_t n_in = 0;
    for (int32_t m = 0; m < n_models; m++) {
        w[m] = fp->n_weights > 0 ? fp->weights[m] : 1.0f;
        participating[m] = w[m] > 0.0f;
    }
    if (fp->mode == SM_FUSION_HARMONY || fp->mode == SM_FUSION_ADAPTIVE) {
        for (int32_t m = 0; m < n_models; m++) n_in += participating[m] && d[m].max_p >= fp->abstain_below;
        for (int32_t m = 0; m < n_models; m++)
            if (n_in > 0) participating[m] = participating[m] && d[m].max_p >= fp->abstain_below;
    }
    switch (fp->mode) {
    case SM_FUSION_AVERAGE:
        mixture(d, w, n_models, n_vocab, out);
        return;
    case SM_FUSION_DEMOCRATIC:
        for (int32_t m = 0; m < n_models; m++) coef[m] = 1.0f, participating[m] = true;
        mixture(d, coef, n_models, n_vocab, out);
        return;
    case SM_FUSION_CONFIDENCE:
    case SM_FUSION_HARMONY:
        for (int32_t m = 0; m < n_models; m++) coef[m] = participating[m] ? w[m] * d[m].max_p : 0.0f;
        mixture(d, coef, n_models, n_vocab, out);
        return;
    case SM_FUSION_ADAPTIVE:
        for (int32_t m = 0; m < n_models; m++) coef[m] = participating[m] ? 1.0f : 0.0f;
        mixture(d, coef, n_models, n_vocab, out);
        return;
    case SM_FUSION_VOTING: {
        double total = 0.0;
        for (int32_t t = 0; t < n_vocab; t++) out[t] = 0.0f;
        for (int32_t m = 0; m < n_models; m++) {
            if (!participating[m]) continue;
            out[d[m].top[0]] += w[m] * d[m].max_p;
            total += w[m] * d[m].max_p;
        }
        for (int32_t t = 0; t < n_vocab; t++) out[t] = out[t] > 0.0f ? (float)log(out[t] / total) : -INFINITY;
        return;
    }
    case SM_FUSION_ROUND_ROBIN: {
        int32_t who = (index / fp->turn) % n_models;
        for (int32_t m = 0; m < n_models; m++) participating[m] = m == who;
        copy_model(&d[who], n_vocab, out);
        return;
    }
    case SM_FUSION_REFERENCE:
        for (int32_t m = 0; m < n_models; m++) participating[m] = m == fp->reference;
        copy_model(&d[fp->reference], n_vocab, out);
        return;
    case SM_FUSION_CONTRASTIVE: {
        const float floor_lp = logf(fp->alpha) + (logf(d[0].max_p));
        for (int32_t m = 0; m < n_models; m++) participating[m] = m < 2;
        for (int32_t t = 0; t < n_vocab; t++) {
            float lp_e = d[0].logits[t] - d[0].log_z;
            float lp_a = d[1].logits[t] - d[1].log_z;
            out[t] = lp_e >= floor_lp ? lp_e - fp->beta * lp_a : -INFINITY;
        }
        return;
    }
    }
}

/* Jensen-Shannon divergence in bits: with M = (P + Q) / 2,
 * JS = (sum p (ln p - ln m) + sum q (ln q - ln m)) / 2 / ln 2, where ln p and
 * ln q are the (clamped) log-probabilities themselves: one log per token. */
static float js_divergence(const sm_model_dist *a, const sm_model_dist *b, int32_t n_vocab) {
    float lanes[SM_LANES] = {0};
    const int32_t full = n_vocab - n_vocab % SM_LANES;
    for (int32_t t = 0; t < n_vocab; t += SM_LANES) {
        const int32_t width = t < full ? SM_LANES : n_vocab - full;
        for (int32_t k = 0; k < width; k++) {
            float lp = a->logits[t + k] - a->log_z;
            float lq = b->logits[t + k] - b->log_z;
            lp = lp < SM_EXP_FLOOR ? SM_EXP_FLOOR : lp;
            lq = lq < SM_EXP_FLOOR ? SM_EXP_FLOOR : lq;
            float p = sm_exp_nonpositive(lp), q = sm_exp_nonpositive(lq);
            float lm = sm_log_positive(0.5f * (p + q));
            lanes[k] += p * (lp - lm) + q * (lq - lm);
        }
    }
    float js = sm_lane_sum(lanes) * (0.5f / 0.693147181f);
    return js < 0.0f ? 0.0f : js > 1.0f ? 1.0f : js;
}

void sm_fusion_agreement(const sm_model_dist *d, int32_t n_models, int32_t n_vocab, sm_token chosen,
                         const bool *participating, int32_t reference, sm_fusion_info *info) {
    memset(info, 0, sizeof *info);
    info->n_models = n_models;
    info->leading_model = -1;
    int32_t agree1 = 0, agree3 = 0, n_in = 0;
    float best = -1.0f;
    for (int32_t m = 0; m < n_models; m++) {
        info->top1[m] = d[m].top[0];
        info->p_top1[m] = d[m].max_p;
        for (int k = 0; k < 3; k++) {
            info->top3[m][k] = d[m].top[k];
            info->p_top3[m][k] = d[m].top[k] >= 0 ? prob(&d[m], d[m].top[k]) : 0.0f;
        }
        info->p_chosen[m] = chosen >= 0 ? prob(&d[m], chosen) : 0.0f;
        if (d[m].top[0] == chosen) {
            agree1++;
            if (d[m].max_p > best) { best = d[m].max_p; info->leading_model = m; }
        }
        if (m != reference && d[m].top[0] != d[reference].top[0]) info->reference_differs = true;
        if (!participating[m]) continue;
        n_in++;
        agree3 += d[m].top[0] == chosen || d[m].top[1] == chosen || d[m].top[2] == chosen;
    }
    info->n_participating = n_in;
    info->top1_agreement = (float)agree1 / (float)n_models;
    info->top3_agreement = n_in ? (float)agree3 / (float)n_in : 0.0f;
    double js = 0.0;
    int32_t pairs = 0;
    for (int32_t a = 0; a < n_models; a++)
        for (int32_t b = a + 1; b < n_models; b++, pairs++) js += js_divergence(&d[a], &d[b], n_vocab);
    info->js_divergence = pairs ? (float)(js / pairs) : 0.0f;
}

float sm_map_distribution(const float *logits_m, int32_t n_vocab_m, const int32_t *map, float *out,
                          int32_t n_vocab_0) {
    sm_model_dist d;
    sm_model_dist_summarize(logits_m, n_vocab_m, &d);
    for (int32_t t = 0; t < n_vocab_0; t++) out[t] = 0.0f;
    double unmapped = 0.0;
    for (int32_t t = 0; t < n_vocab_m; t++) {
        float p = prob(&d, t);
        if (map[t] >= 0) out[map[t]] += p;
        else unmapped += p;
    }
    for (int32_t t = 0; t < n_vocab_0; t++) out[t] = out[t] > 0.0f ? logf(out[t]) : -INFINITY;
    return (float)unmapped;
}
