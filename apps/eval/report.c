/* The evaluation's tables on the terminal, and its CSV and JSON files. */
#include "eval/report.h"

#include "cli/lib_extras.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ */
/* Cells                                                               */
/* ------------------------------------------------------------------ */

/* Display columns of UTF-8 text (every code point counts one). */
static int display_width(const char *s) {
    int n = 0;
    for (; *s; s++) n += ((unsigned char)*s & 0xC0) != 0x80;
    return n;
}

static void cell(FILE *out, const char *text, int width, bool left) {
    int pad = width - display_width(text);
    if (!left) fprintf(out, "%*s", pad > 0 ? pad : 0, "");
    fputs(text, out);
    if (left) fprintf(out, "%*s", pad > 0 ? pad : 0, "");
    fputs("  ", out);
}

static const char *number(char *buf, size_t size, double v, int decimals) {
    if (isnan(v)) snprintf(buf, size, "-");
    else snprintf(buf, size, "%.*f", decimals, v);
    return buf;
}

/* "0.412±0.013", or "0.412" where there is no standard error. */
static const char *estimate(char *buf, size_t size, const eval_estimate *e, int decimals) {
    if (isnan(e->mean)) snprintf(buf, size, "-");
    else if (isnan(e->se)) snprintf(buf, size, "%.*f", decimals, e->mean);
    else snprintf(buf, size, "%.*f±%.*f", decimals, e->mean, decimals, e->se);
    return buf;
}

/* "-0.120±0.031*": * marks a difference larger than two standard errors. */
static const char *paired(char *buf, size_t size, const eval_paired *d, int decimals) {
    if (isnan(d->diff)) snprintf(buf, size, "-");
    else if (isnan(d->se)) snprintf(buf, size, "%+.*f", decimals, d->diff);
    else snprintf(buf, size, "%+.*f±%.*f%s", decimals, d->diff, decimals, d->se, d->significant ? "*" : "");
    return buf;
}

static void stop_list(char *buf, size_t size, const eval_summary *s) {
    size_t used = 0;
    buf[0] = '\0';
    for (int r = 0; r <= SM_STOP_ERROR && used < size; r++) {
        if (!s->stops[r]) continue;
        int n = snprintf(buf + used, size - used, "%s%s %d", used ? ", " : "", sm_stop_reason_name((sm_stop_reason)r),
                         s->stops[r]);
        if (n < 0) break;
        used += (size_t)n;
    }
}

static int name_width(const eval_report *r) {
    int w = (int)strlen("strategy");
    for (int32_t i = 0; i < r->n_strategies; i++) {
        int n = display_width(r->strategies[i].spec);
        if (n > w) w = n;
    }
    return w;
}

/* ------------------------------------------------------------------ */
/* Terminal                                                            */
/* ------------------------------------------------------------------ */

typedef struct column {
    const char *title;
    eval_metric metric;
    int width, decimals;
    bool with_error;
} column;

static void print_table(FILE *out, const eval_report *r, const column *cols, int n_cols, bool paired_diffs) {
    int nw = name_width(r);
    cell(out, "strategy", nw, true);
    for (int c = 0; c < n_cols; c++) cell(out, cols[c].title, cols[c].width, false);
    fputc('\n', out);
    for (int32_t i = 0; i < r->n_strategies; i++) {
        if (paired_diffs && i == r->baseline) continue;
        const eval_summary *s = &r->summaries[i];
        cell(out, r->strategies[i].spec, nw, true);
        for (int c = 0; c < n_cols; c++) {
            char buf[64];
            const column *col = &cols[c];
            const char *text = paired_diffs     ? paired(buf, sizeof buf, &s->paired[col->metric], col->decimals)
                               : col->with_error ? estimate(buf, sizeof buf, &s->metric[col->metric], col->decimals)
                                                 : number(buf, sizeof buf, s->metric[col->metric].mean, col->decimals);
            cell(out, text, col->width, false);
        }
        fputc('\n', out);
    }
}

void eval_print_tables(FILE *out, const eval_report *r) {
    const eval_options *o = r->opt;
    fprintf(out, "\nmodel: %s   judge: %s\n", r->model_description, r->judge_description ? r->judge_description : "none");
    fprintf(out, "%d prompts, %d tokens each, %d seeds for sampling strategies, %.1f s\n", r->prompts->n, o->n_predict,
            o->n_seeds, r->wall_seconds);
    fputs("\nquality (mean over seeds ± standard error; lower rep and NLL are better)\n", out);
    const column quality[] = {
        {"rep-2", EVAL_REP_2, 6, 3, false},
        {"rep-3", EVAL_REP_3, 6, 3, false},
        {"rep-4", EVAL_REP_4, 12, 3, true},
        {"diversity", EVAL_DIVERSITY, 12, 3, true},
        {"seq-rep-4", EVAL_SEQ_REP_4, 9, 3, false},
        {"dist-1", EVAL_DISTINCT_1, 6, 3, false},
        {"dist-2", EVAL_DISTINCT_2, 6, 3, false},
        {"length", EVAL_LENGTH, 6, 1, false},
        {"judge b/B", EVAL_JUDGE_BPB, 12, 3, true},
        {"exact", EVAL_EXACT_MATCH, 5, 2, false},
        {"contains", EVAL_CONTAINS_MATCH, 8, 2, false},
    };
    bool refs = r->prompts->n_with_reference > 0;
    print_table(out, r, quality, refs ? 11 : 9, false);
    fputs("\ncost\n", out);
    const column cost[] = {
        {"decoded/kept", EVAL_DECODED_PER_KEPT, 12, 3, false},
        {"sampled/kept", EVAL_SAMPLED_PER_KEPT, 12, 3, false},
        {"removals/100", EVAL_REMOVALS_PER_100, 12, 2, false},
        {"tokens/s", EVAL_TOKENS_PER_S, 8, 0, false},
    };
    int nw = name_width(r);
    cell(out, "strategy", nw, true);
    for (int c = 0; c < 4; c++) cell(out, cost[c].title, cost[c].width, false);
    fputs("outputs  stops\n", out);
    for (int32_t i = 0; i < r->n_strategies; i++) {
        const eval_summary *s = &r->summaries[i];
        char buf[256];
        cell(out, r->strategies[i].spec, nw, true);
        for (int c = 0; c < 4; c++)
            cell(out, number(buf, sizeof buf, s->metric[cost[c].metric].mean, cost[c].decimals), cost[c].width, false);
        snprintf(buf, sizeof buf, "%d", s->n_outputs);
        cell(out, buf, 7, false);
        stop_list(buf, sizeof buf, s);
        fprintf(out, "%s\n", buf);
    }
    if (r->n_strategies > 1) {
        fprintf(out,
                "\nagainst %s, prompt by prompt (mean difference ± standard error; * = larger than 2 SE)\n",
                r->strategies[r->baseline].spec);
        const column diffs[] = {
            {"Δrep-4", EVAL_REP_4, 15, 3, false},
            {"Δdiversity", EVAL_DIVERSITY, 15, 3, false},
            {"Δseq-rep-4", EVAL_SEQ_REP_4, 15, 3, false},
            {"Δjudge b/B", EVAL_JUDGE_BPB, 15, 3, false},
            {"Δlength", EVAL_LENGTH, 13, 1, false},
        };
        print_table(out, r, diffs, 5, true);
    }
    if (r->n_unjudged > 0)
        fprintf(out, "\nnote: %d outputs were longer than a judge's context and have no judge score\n", r->n_unjudged);
}

/* ------------------------------------------------------------------ */
/* CSV: one row per strategy                                           */
/* ------------------------------------------------------------------ */

static void csv_text(FILE *f, const char *s) {
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"') fputc('"', f);
        fputc(*s, f);
    }
    fputc('"', f);
}

static void csv_number(FILE *f, double v) {
    fputc(',', f);
    if (!isnan(v)) fprintf(f, "%.6g", v);
}

int eval_write_csv(FILE *f, const eval_report *r) {
    fputs("strategy,baseline,deterministic,outputs,seeds,judged", f);
    for (int m = 0; m < EVAL_N_METRICS; m++) {
        const char *k = eval_metric_key((eval_metric)m);
        fprintf(f, ",%s,%s_se,%s_diff,%s_diff_se,%s_diff_significant", k, k, k, k, k);
    }
    fputs(",stops\n", f);
    for (int32_t i = 0; i < r->n_strategies; i++) {
        const eval_summary *s = &r->summaries[i];
        csv_text(f, r->strategies[i].spec);
        fprintf(f, ",%d,%d,%d,%d,%d", i == r->baseline, r->strategies[i].deterministic, s->n_outputs, s->n_seeds,
                s->n_judged);
        for (int m = 0; m < EVAL_N_METRICS; m++) {
            csv_number(f, s->metric[m].mean);
            csv_number(f, s->metric[m].se);
            csv_number(f, s->paired[m].diff);
            csv_number(f, s->paired[m].se);
            fprintf(f, ",%d", s->paired[m].significant);
        }
        char stops[256];
        stop_list(stops, sizeof stops, s);
        fputc(',', f);
        csv_text(f, stops);
        fputc('\n', f);
    }
    return ferror(f) ? -1 : 0;
}

/* ------------------------------------------------------------------ */
/* JSON: the run, every metric, every output                           */
/* ------------------------------------------------------------------ */

static cJSON *config_json(const eval_report *r) {
    const eval_options *o = r->opt;
    cJSON *c = cJSON_CreateObject();
    cJSON_AddStringToObject(c, "command", r->command);
    cJSON_AddStringToObject(c, "prompts_file", o->prompts_path);
    cJSON_AddNumberToObject(c, "n_prompts", r->prompts->n);
    cJSON_AddStringToObject(c, "model", o->model_path);
    cJSON_AddStringToObject(c, "model_description", r->model_description);
    cJSON *models = cJSON_AddArrayToObject(c, "fusion_models");
    for (int32_t m = 0; m < o->n_models; m++) cJSON_AddItemToArray(models, cJSON_CreateString(o->model_paths[m]));
    cJSON *judges = cJSON_AddArrayToObject(c, "judges");
    for (int32_t k = 0; k < o->n_judges; k++) cJSON_AddItemToArray(judges, cJSON_CreateString(o->judge_paths[k]));
    cJSON_AddNumberToObject(c, "n_predict", o->n_predict);
    cJSON_AddNumberToObject(c, "n_seeds", o->n_seeds);
    sm_json_add_u64(c, "first_seed", o->first_seed);
    cJSON_AddStringToObject(c, "baseline", r->strategies[r->baseline].spec);
    cJSON_AddNumberToObject(c, "wall_seconds", r->wall_seconds);
    cJSON_AddNumberToObject(c, "n_unjudged", r->n_unjudged);
    return c;
}

static cJSON *strategy_json(const eval_report *r, int32_t i) {
    const eval_strategy *st = &r->strategies[i];
    const eval_summary *s = &r->summaries[i];
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "name", st->spec);
    cJSON_AddBoolToObject(j, "baseline", i == r->baseline);
    cJSON_AddBoolToObject(j, "deterministic", st->deterministic);
    cJSON_AddBoolToObject(j, "fused", st->fused);
    cJSON_AddNumberToObject(j, "n_outputs", s->n_outputs);
    cJSON_AddNumberToObject(j, "n_seeds", s->n_seeds);
    cJSON_AddNumberToObject(j, "n_judged", s->n_judged);
    cJSON *params = sm_gen_params_to_cjson(&st->gen);
    cJSON_DeleteItemFromObjectCaseSensitive(params, "seed"); /* each output has its own */
    cJSON_AddItemToObject(j, "params", params);
    cJSON *metrics = cJSON_AddObjectToObject(j, "metrics");
    for (int m = 0; m < EVAL_N_METRICS; m++) {
        cJSON *e = cJSON_AddObjectToObject(metrics, eval_metric_key((eval_metric)m));
        cJSON_AddNumberToObject(e, "mean", s->metric[m].mean);
        cJSON_AddNumberToObject(e, "se", s->metric[m].se);
        cJSON_AddNumberToObject(e, "n_seeds", s->metric[m].n);
        cJSON_AddNumberToObject(e, "diff", s->paired[m].diff);
        cJSON_AddNumberToObject(e, "diff_se", s->paired[m].se);
        cJSON_AddNumberToObject(e, "n_pairs", s->paired[m].n);
        cJSON_AddBoolToObject(e, "significant", s->paired[m].significant);
    }
    cJSON *stops = cJSON_AddObjectToObject(j, "stops");
    for (int k = 0; k <= SM_STOP_ERROR; k++)
        if (s->stops[k]) cJSON_AddNumberToObject(stops, sm_stop_reason_name((sm_stop_reason)k), s->stops[k]);
    return j;
}

static cJSON *output_json(const eval_report *r, const eval_output *o) {
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "strategy", r->strategies[o->strategy].spec);
    cJSON_AddNumberToObject(j, "prompt", o->prompt);
    sm_json_add_u64(j, "seed", o->seed);
    cJSON_AddNumberToObject(j, "n_prompt_tokens", o->n_prompt_tokens);
    cJSON_AddNumberToObject(j, "n_tokens", o->n_tokens);
    cJSON_AddNumberToObject(j, "n_decoded", (double)o->n_decoded);
    cJSON_AddNumberToObject(j, "n_sampled", o->n_sampled);
    cJSON_AddNumberToObject(j, "n_retractions", o->n_retractions);
    cJSON_AddNumberToObject(j, "n_backtracks", o->n_backtracks);
    cJSON_AddStringToObject(j, "stop_reason", sm_stop_reason_name(o->stop));
    cJSON_AddNumberToObject(j, "t_generate_ms", o->t_generate_ms);
    cJSON_AddNumberToObject(j, "judge_bpb", o->judge_bpb);
    cJSON *each = cJSON_AddArrayToObject(j, "judge_each_bpb");
    for (int k = 0; k < 4 && !isnan(o->judge_each_bpb[k]); k++) cJSON_AddItemToArray(each, cJSON_CreateNumber(o->judge_each_bpb[k]));
    if (o->exact >= 0) {
        cJSON_AddBoolToObject(j, "exact_match", o->exact);
        cJSON_AddBoolToObject(j, "contains_match", o->contains);
    }
    sm_json_add_text(j, "text", o->text, strlen(o->text));
    cJSON_AddItemToObject(j, "tokens", cJSON_CreateIntArray(o->tokens, o->n_tokens));
    return j;
}

int eval_write_json(FILE *f, const eval_report *r) {
    cJSON *root = cJSON_CreateObject();
    cJSON_AddItemToObject(root, "config", config_json(r));
    cJSON *prompts = cJSON_AddArrayToObject(root, "prompts");
    for (int32_t p = 0; p < r->prompts->n; p++) {
        cJSON *j = cJSON_CreateObject();
        sm_json_add_text(j, "prompt", r->prompts->items[p].text, strlen(r->prompts->items[p].text));
        if (r->prompts->items[p].reference) cJSON_AddStringToObject(j, "reference", r->prompts->items[p].reference);
        cJSON_AddItemToArray(prompts, j);
    }
    cJSON *strategies = cJSON_AddArrayToObject(root, "strategies");
    for (int32_t i = 0; i < r->n_strategies; i++) cJSON_AddItemToArray(strategies, strategy_json(r, i));
    cJSON *outputs = cJSON_AddArrayToObject(root, "outputs");
    for (int32_t i = 0; i < r->n_outputs; i++) cJSON_AddItemToArray(outputs, output_json(r, &r->outputs[i]));
    char *text = cJSON_Print(root);
    cJSON_Delete(root);
    if (!text) return -1;
    fputs(text, f);
    fputc('\n', f);
    free(text);
    return ferror(f) ? -1 : 0;
}
