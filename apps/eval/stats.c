/*
 * Every metric is computed over a group of outputs. A strategy's value is
 * the mean over its seeds of the metric computed on that seed's outputs
 * (all prompts), with the standard error over seeds; the paired comparison
 * computes the metric per prompt (all seeds of that prompt) for the
 * strategy and the baseline and averages the differences.
 */
#include "eval/stats.h"

#include <math.h>
#include <stdlib.h>

static const struct {
    const char *key, *label;
} METRIC_NAMES[EVAL_N_METRICS] = {
    [EVAL_REP_2] = {"rep_2", "rep-2"},
    [EVAL_REP_3] = {"rep_3", "rep-3"},
    [EVAL_REP_4] = {"rep_4", "rep-4"},
    [EVAL_DIVERSITY] = {"diversity", "diversity"},
    [EVAL_SEQ_REP_4] = {"seq_rep_4", "seq-rep-4"},
    [EVAL_DISTINCT_1] = {"distinct_1", "distinct-1"},
    [EVAL_DISTINCT_2] = {"distinct_2", "distinct-2"},
    [EVAL_LENGTH] = {"mean_length", "length"},
    [EVAL_JUDGE_BPB] = {"judge_bpb", "judge b/B"},
    [EVAL_JUDGE_1_BPB] = {"judge_1_bpb", "judge 1 b/B"},
    [EVAL_JUDGE_2_BPB] = {"judge_2_bpb", "judge 2 b/B"},
    [EVAL_JUDGE_3_BPB] = {"judge_3_bpb", "judge 3 b/B"},
    [EVAL_JUDGE_4_BPB] = {"judge_4_bpb", "judge 4 b/B"},
    [EVAL_EXACT_MATCH] = {"exact_match", "exact"},
    [EVAL_CONTAINS_MATCH] = {"contains_match", "contains"},
    [EVAL_DECODED_PER_KEPT] = {"decoded_per_kept", "decoded/kept"},
    [EVAL_SAMPLED_PER_KEPT] = {"sampled_per_kept", "sampled/kept"},
    [EVAL_REMOVALS_PER_100] = {"removals_per_100", "removals/100"},
    [EVAL_TOKENS_PER_S] = {"tokens_per_s", "tokens/s"},
};

const char *eval_metric_key(eval_metric m) { return METRIC_NAMES[m].key; }
const char *eval_metric_label(eval_metric m) { return METRIC_NAMES[m].label; }

void eval_output_free(eval_output *o) {
    free(o->tokens);
    free(o->text);
    o->tokens = NULL;
    o->text = NULL;
}

typedef struct group {
    int32_t strategy;
    int32_t seed_index; /* -1: any  */
    int32_t prompt;     /* -1: any  */
} group;

static bool in_group(const eval_output *o, const group *g) {
    return o->strategy == g->strategy && (g->seed_index < 0 || o->seed_index == g->seed_index) &&
           (g->prompt < 0 || o->prompt == g->prompt);
}

static double ratio(double num, double den) { return den > 0 ? num / den : NAN; }

/* All metrics over the outputs of one group; NaN where undefined. */
static int group_metrics(const eval_output *outputs, int32_t n_outputs, const group *g, double *v) {
    const sm_token **tokens = malloc(sizeof *tokens * (size_t)(n_outputs > 0 ? n_outputs : 1));
    int32_t *lengths = malloc(sizeof *lengths * (size_t)(n_outputs > 0 ? n_outputs : 1));
    if (!tokens || !lengths) {
        free(tokens);
        free(lengths);
        return -1;
    }
    int32_t n = 0, n_judged = 0, n_ref = 0, n_exact = 0, n_contains = 0;
    /* judge scores are pooled over bytes: total bits / total bytes, so a
     * short output weighs what its bytes weigh */
    double bits = 0, bytes = 0, kept = 0, decoded = 0, sampled = 0, removals = 0, ms = 0;
    double each_bits[4] = {0}, each_bytes[4] = {0};
    for (int32_t i = 0; i < n_outputs; i++) {
        const eval_output *o = &outputs[i];
        if (!in_group(o, g)) continue;
        tokens[n] = o->tokens;
        lengths[n++] = o->n_tokens;
        if (!isnan(o->judge_bpb)) {
            bits += o->judge_bpb * (double)o->n_judged_bytes;
            bytes += (double)o->n_judged_bytes;
            n_judged++;
        }
        for (int k = 0; k < 4; k++)
            if (!isnan(o->judge_each_bpb[k])) {
                each_bits[k] += o->judge_each_bpb[k] * (double)o->n_judged_bytes;
                each_bytes[k] += (double)o->n_judged_bytes;
            }
        if (o->exact >= 0) {
            n_ref++;
            n_exact += o->exact;
            n_contains += o->contains;
        }
        kept += o->n_tokens;
        decoded += (double)o->n_decoded;
        sampled += o->n_sampled;
        removals += o->n_retractions + o->n_backtracks;
        ms += o->t_generate_ms;
    }
    sm_text_metrics tm;
    sm_status st = sm_text_metrics_compute(tokens, lengths, n, &tm);
    free(tokens);
    free(lengths);
    if (st != SM_OK) return -1;
    v[EVAL_REP_2] = tm.rep[2];
    v[EVAL_REP_3] = tm.rep[3];
    v[EVAL_REP_4] = tm.rep[4];
    v[EVAL_DIVERSITY] = tm.diversity;
    v[EVAL_SEQ_REP_4] = tm.seq_rep_4;
    v[EVAL_DISTINCT_1] = tm.distinct[1];
    v[EVAL_DISTINCT_2] = tm.distinct[2];
    v[EVAL_LENGTH] = tm.mean_length;
    v[EVAL_JUDGE_BPB] = n_judged > 0 ? ratio(bits, bytes) : NAN;
    for (int k = 0; k < 4; k++) v[EVAL_JUDGE_1_BPB + k] = ratio(each_bits[k], each_bytes[k]);
    v[EVAL_EXACT_MATCH] = ratio(n_exact, n_ref);
    v[EVAL_CONTAINS_MATCH] = ratio(n_contains, n_ref);
    v[EVAL_DECODED_PER_KEPT] = ratio(decoded, kept);
    v[EVAL_SAMPLED_PER_KEPT] = ratio(sampled, kept);
    v[EVAL_REMOVALS_PER_100] = 100.0 * ratio(removals, kept);
    v[EVAL_TOKENS_PER_S] = ratio(kept, ms / 1000.0);
    return 0;
}

/* Mean and standard error of the defined values among x[0..n). */
static void mean_se(const double *x, int32_t n, double *mean, double *se, int32_t *used) {
    double sum = 0;
    int32_t k = 0;
    for (int32_t i = 0; i < n; i++)
        if (!isnan(x[i])) {
            sum += x[i];
            k++;
        }
    *used = k;
    *mean = k > 0 ? sum / k : NAN;
    if (k < 2) {
        *se = NAN;
        return;
    }
    double ss = 0;
    for (int32_t i = 0; i < n; i++)
        if (!isnan(x[i])) ss += (x[i] - *mean) * (x[i] - *mean);
    *se = sqrt(ss / (k - 1) / k);
}

static int estimate_over_seeds(const eval_output *outputs, int32_t n_outputs, int32_t strategy, int32_t n_seeds,
                               eval_summary *out) {
    double *values = malloc(sizeof *values * (size_t)n_seeds * EVAL_N_METRICS);
    double *column = malloc(sizeof *column * (size_t)n_seeds);
    if (!values || !column) {
        free(values);
        free(column);
        return -1;
    }
    int rc = 0;
    for (int32_t k = 0; k < n_seeds && rc == 0; k++)
        rc = group_metrics(outputs, n_outputs, &(group){strategy, k, -1}, values + (size_t)k * EVAL_N_METRICS);
    for (int m = 0; m < EVAL_N_METRICS && rc == 0; m++) {
        for (int32_t k = 0; k < n_seeds; k++) column[k] = values[(size_t)k * EVAL_N_METRICS + m];
        eval_estimate *e = &out->metric[m];
        mean_se(column, n_seeds, &e->mean, &e->se, &e->n);
    }
    free(values);
    free(column);
    return rc;
}

static int compare_with_baseline(const eval_output *outputs, int32_t n_outputs, int32_t strategy, int32_t baseline,
                                 int32_t n_prompts, eval_summary *out) {
    double *diffs = malloc(sizeof *diffs * (size_t)n_prompts * EVAL_N_METRICS);
    double *column = malloc(sizeof *column * (size_t)n_prompts);
    if (!diffs || !column) {
        free(diffs);
        free(column);
        return -1;
    }
    int rc = 0;
    for (int32_t p = 0; p < n_prompts && rc == 0; p++) {
        double mine[EVAL_N_METRICS], base[EVAL_N_METRICS];
        rc = group_metrics(outputs, n_outputs, &(group){strategy, -1, p}, mine);
        if (rc == 0) rc = group_metrics(outputs, n_outputs, &(group){baseline, -1, p}, base);
        for (int m = 0; m < EVAL_N_METRICS; m++) diffs[(size_t)p * EVAL_N_METRICS + m] = mine[m] - base[m];
    }
    for (int m = 0; m < EVAL_N_METRICS && rc == 0; m++) {
        for (int32_t p = 0; p < n_prompts; p++) column[p] = diffs[(size_t)p * EVAL_N_METRICS + m];
        eval_paired *d = &out->paired[m];
        mean_se(column, n_prompts, &d->diff, &d->se, &d->n);
        d->significant = d->n >= 2 && !isnan(d->se) && fabs(d->diff) > 2.0 * d->se;
    }
    free(diffs);
    free(column);
    return rc;
}

int eval_summarize(const eval_output *outputs, int32_t n_outputs, int32_t strategy, int32_t n_seeds,
                   int32_t baseline, int32_t n_prompts, eval_summary *out) {
    *out = (eval_summary){.n_seeds = n_seeds};
    for (int32_t i = 0; i < n_outputs; i++) {
        const eval_output *o = &outputs[i];
        if (o->strategy != strategy) continue;
        out->n_outputs++;
        out->n_judged += !isnan(o->judge_bpb);
        if (o->stop >= 0 && o->stop <= SM_STOP_ERROR) out->stops[o->stop]++;
    }
    if (estimate_over_seeds(outputs, n_outputs, strategy, n_seeds, out) != 0) return -1;
    return compare_with_baseline(outputs, n_outputs, strategy, baseline, n_prompts, out);
}
