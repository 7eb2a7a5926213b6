/*
 * Observation through llama.cpp's eval callback: per decoded token, the
 * chosen layers' residual outputs (l_out-N) reduced to norm, mean and
 * max |x|, and the attention entropy of every head (kq_soft_max-N), for
 * the last rows of the batch only. Also the pure pieces built on those
 * statistics: safety rules, the built-in introspection tool, their JSON.
 *
 * The callback asks for nothing but the wanted nodes, so the graph is only
 * split where a node must be read; with introspection off the session
 * registers no callback at all.
 */
#include "internal.h"

#include "ggml-backend.h"
#include "ggml.h"

#include <cjson/cJSON.h>

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct sm_introspector {
    int32_t n_layer_model, n_embd, n_head;
    int32_t n_layers;          /* observed layers                              */
    int32_t *layers;           /* their indices, ascending                     */
    int32_t *slot_of;          /* model layer -> observed slot, or -1          */
    bool attention, hidden;
    int32_t max_rows;
    int32_t n_rows;            /* rows of interest: the batch's last n_rows    */
    size_t record_size;        /* one row's stats: layer stats + attention     */
    unsigned char *records;    /* max_rows records                             */
    float *hidden_rows;        /* max_rows * n_layers * n_embd, or NULL        */
    float *row;                /* scratch: one tensor row as floats            */
    int64_t row_cap;
    int64_t n_calls;
    bool decoded;              /* a decode has filled the records              */
    /* Accumulation (steering): per observed layer the sum of every row past
     * skip_rows, and how many rows were summed. */
    bool accumulate;
    int32_t skip_rows;
    double *sums;
    int64_t *counts;
};

static size_t stats_bytes(const sm_introspector *in) { return sizeof(sm_layer_stats) * (size_t)in->n_layers; }

sm_introspector *sm_introspector_new(const struct llama_model *lm, const int32_t *layers, int32_t n_layers,
                                     bool all_layers, bool attention, bool hidden, int32_t max_rows, char *msg,
                                     size_t msg_size) {
    const int32_t n_layer = llama_model_n_layer(lm);
    if (max_rows < 1) max_rows = 1;
    if (n_layers < 0 || (n_layers > 0 && !layers)) {
        snprintf(msg, msg_size, "introspection: %d layers without an array", n_layers);
        return NULL;
    }
    bool *wanted = calloc((size_t)(n_layer > 0 ? n_layer : 1), sizeof(bool));
    if (!wanted) {
        snprintf(msg, msg_size, "out of memory");
        return NULL;
    }
    for (int32_t i = 0; i < n_layers; i++) {
        int32_t l = layers[i] < 0 ? n_layer + layers[i] : layers[i];
        if (l < 0 || l >= n_layer) {
            snprintf(msg, msg_size, "introspection layer %d does not exist: the model has layers 0 to %d (or -1 to -%d)",
                     layers[i], n_layer - 1, n_layer);
            free(wanted);
            return NULL;
        }
        wanted[l] = true;
    }
    sm_introspector *in = calloc(1, sizeof *in);
    if (!in) {
        free(wanted);
        snprintf(msg, msg_size, "out of memory");
        return NULL;
    }
    in->n_layer_model = n_layer;
    in->n_embd = llama_model_n_embd(lm);
    in->n_head = llama_model_n_head(lm);
    in->attention = attention;
    in->hidden = hidden;
    in->max_rows = max_rows;
    in->n_rows = 1;
    in->layers = malloc(sizeof(int32_t) * (size_t)(n_layer > 0 ? n_layer : 1));
    in->slot_of = malloc(sizeof(int32_t) * (size_t)(n_layer > 0 ? n_layer : 1));
    if (in->layers && in->slot_of) {
        for (int32_t l = 0; l < n_layer; l++) {
            in->slot_of[l] = -1;
            if (!all_layers && !wanted[l]) continue;
            in->slot_of[l] = in->n_layers;
            in->layers[in->n_layers++] = l;
        }
    }
    free(wanted);
    in->record_size = stats_bytes(in) + (attention ? sizeof(float) * (size_t)in->n_layers * (size_t)in->n_head : 0);
    in->records = malloc(in->record_size * (size_t)max_rows + 1);
    if (hidden) in->hidden_rows = malloc(sizeof(float) * (size_t)max_rows * (size_t)in->n_layers * (size_t)in->n_embd + 1);
    if (!in->layers || !in->slot_of || !in->records || (hidden && !in->hidden_rows)) {
        sm_introspector_free(in);
        snprintf(msg, msg_size, "out of memory for introspection");
        return NULL;
    }
    if (in->n_layers == 0) {
        sm_introspector_free(in);
        snprintf(msg, msg_size, "introspection: no layer chosen");
        return NULL;
    }
    return in;
}

void sm_introspector_free(sm_introspector *in) {
    if (!in) return;
    free(in->layers);
    free(in->slot_of);
    free(in->records);
    free(in->hidden_rows);
    free(in->row);
    free(in->sums);
    free(in->counts);
    free(in);
}

/* Every value NaN until the callback writes it, so a node the graph never
 * showed cannot pass for a measurement. */
void sm_introspector_expect_rows(sm_introspector *in, int32_t n_rows) {
    in->n_rows = n_rows < 1 ? 1 : n_rows > in->max_rows ? in->max_rows : n_rows;
    for (int32_t r = 0; r < in->n_rows; r++) {
        unsigned char *rec = in->records + in->record_size * (size_t)r;
        sm_layer_stats *ls = (sm_layer_stats *)rec;
        for (int32_t l = 0; l < in->n_layers; l++)
            ls[l] = (sm_layer_stats){.layer = in->layers[l], .norm = NAN, .mean = NAN, .max_abs = NAN};
        float *attn = (float *)(rec + stats_bytes(in));
        if (in->attention)
            for (int32_t k = 0; k < in->n_layers * in->n_head; k++) attn[k] = NAN;
    }
    in->decoded = true;
}

int32_t sm_introspector_n_layers(const sm_introspector *in) { return in->n_layers; }
const int32_t *sm_introspector_layers(const sm_introspector *in) { return in->layers; }
int32_t sm_introspector_n_embd(const sm_introspector *in) { return in->n_embd; }
size_t sm_introspector_record_size(const sm_introspector *in) { return in->record_size; }
size_t sm_introspector_hidden_floats(const sm_introspector *in) {
    return in->hidden ? (size_t)in->n_layers * (size_t)in->n_embd : 0;
}
int64_t sm_introspector_calls(const sm_introspector *in) { return in->n_calls; }
bool sm_introspector_has_data(const sm_introspector *in) { return in->decoded; }

int32_t sm_introspector_slot(const sm_introspector *in, int32_t layer) {
    if (layer < 0) layer += in->n_layer_model;
    if (layer < 0 || layer >= in->n_layer_model) return -1;
    return in->slot_of[layer];
}

const void *sm_introspector_record(const sm_introspector *in, int32_t row) {
    return in->records + in->record_size * (size_t)row;
}

const float *sm_introspector_hidden(const sm_introspector *in, int32_t row) {
    return in->hidden ? in->hidden_rows + (size_t)row * sm_introspector_hidden_floats(in) : NULL;
}

void sm_introspector_view(const sm_introspector *in, const void *record, const float *hidden,
                          sm_introspection *out) {
    const unsigned char *rec = record;
    *out = (sm_introspection){
        .n_layers = in->n_layers,
        .layers = (const sm_layer_stats *)rec,
        .n_heads = in->attention ? in->n_head : 0,
        .attn_entropy = in->attention ? (const float *)(rec + stats_bytes(in)) : NULL,
        .n_embd = in->n_embd,
        .hidden = in->hidden ? hidden : NULL,
    };
}

/* Accumulating mode for steering: sums every row after the first
 * skip_rows of each observed layer's output. */
int sm_introspector_accumulate(sm_introspector *in, bool on, int32_t skip_rows) {
    in->accumulate = on;
    in->skip_rows = skip_rows;
    if (!on) return 0;
    if (!in->sums) {
        in->sums = malloc(sizeof(double) * (size_t)in->n_layers * (size_t)in->n_embd);
        in->counts = malloc(sizeof(int64_t) * (size_t)in->n_layers);
        if (!in->sums || !in->counts) return -1;
    }
    memset(in->sums, 0, sizeof(double) * (size_t)in->n_layers * (size_t)in->n_embd);
    memset(in->counts, 0, sizeof(int64_t) * (size_t)in->n_layers);
    return 0;
}

/* The mean of the accumulated rows of observed slot l (n_embd floats);
 * false when no row was seen. */
bool sm_introspector_mean(const sm_introspector *in, int32_t slot, float *out) {
    if (!in->sums || in->counts[slot] == 0) return false;
    const double *sum = in->sums + (size_t)slot * (size_t)in->n_embd;
    for (int32_t j = 0; j < in->n_embd; j++) out[j] = (float)(sum[j] / (double)in->counts[slot]);
    return true;
}

/* ------------------------------------------------------------------ */
/* The eval callback                                                   */
/* ------------------------------------------------------------------ */

/* "prefix-N" -> N, or -1 when the name is something else. */
static int32_t layer_of(const char *name, const char *prefix) {
    size_t n = strlen(prefix);
    if (strncmp(name, prefix, n) != 0 || name[n] != '-' || !isdigit((unsigned char)name[n + 1])) return -1;
    char *end;
    long v = strtol(name + n + 1, &end, 10);
    return *end == '\0' && v >= 0 && v < INT32_MAX ? (int32_t)v : -1;
}

/* Row (i1, i2, i3) of a tensor as n = ne[0] floats: straight from host
 * memory when it is F32 and contiguous in a row, else copied. */
static const float *tensor_row(sm_introspector *in, const struct ggml_tensor *t, int64_t i1, int64_t i2) {
    const int64_t n = t->ne[0];
    const size_t offset = (size_t)i1 * t->nb[1] + (size_t)i2 * t->nb[2];
    const bool host = t->buffer == NULL || ggml_backend_buffer_is_host(t->buffer);
    if (host && t->type == GGML_TYPE_F32 && t->nb[0] == sizeof(float)) return (const float *)((const char *)t->data + offset);
    if (t->type != GGML_TYPE_F32 && t->type != GGML_TYPE_F16) return NULL;
    if (t->nb[0] != ggml_type_size(t->type)) return NULL;
    if (in->row_cap < n * 2) {
        float *r = realloc(in->row, sizeof(float) * (size_t)n * 2);
        if (!r) return NULL;
        in->row = r;
        in->row_cap = n * 2;
    }
    /* F16 bytes go in the upper half of the scratch row, then widen. */
    void *raw = t->type == GGML_TYPE_F32 ? (void *)in->row : (void *)(in->row + n);
    size_t bytes = (size_t)n * ggml_type_size(t->type);
    if (host) memcpy(raw, (const char *)t->data + offset, bytes);
    else ggml_backend_tensor_get(t, raw, offset, bytes);
    if (t->type == GGML_TYPE_F16) ggml_fp16_to_fp32_row((const ggml_fp16_t *)raw, in->row, n);
    return in->row;
}

static void layer_stats(const float *x, int64_t n, sm_layer_stats *out) {
    double sum = 0.0, sq = 0.0;
    float max_abs = 0.0f;
    for (int64_t j = 0; j < n; j++) {
        sum += x[j];
        sq += (double)x[j] * x[j];
        float a = fabsf(x[j]);
        if (a > max_abs || isnan(a)) max_abs = a;
    }
    out->norm = (float)sqrt(sq);
    out->mean = n > 0 ? (float)(sum / (double)n) : 0.0f;
    out->max_abs = max_abs;
}

/* Entropy of one softmax row; masked entries are exactly 0. */
static float row_entropy(const float *p, int64_t n) {
    double h = 0.0;
    for (int64_t j = 0; j < n; j++)
        if (p[j] > 0.0f) h -= (double)p[j] * log((double)p[j]);
    return (float)h;
}

static void observe_layer_output(sm_introspector *in, const struct ggml_tensor *t, int32_t slot) {
    const int64_t rows = t->ne[1];
    if (rows <= 0 || t->ne[0] != in->n_embd) return;
    if (in->accumulate) {
        double *sum = in->sums + (size_t)slot * (size_t)in->n_embd;
        for (int64_t r = in->skip_rows; r < rows; r++) {
            const float *x = tensor_row(in, t, r, 0);
            if (!x) return;
            for (int64_t j = 0; j < t->ne[0]; j++) sum[j] += x[j];
            in->counts[slot]++;
        }
        return;
    }
    int32_t n = in->n_rows < rows ? in->n_rows : (int32_t)rows;
    for (int32_t r = 0; r < n; r++) {
        const float *x = tensor_row(in, t, rows - n + r, 0);
        if (!x) return;
        sm_layer_stats *ls = (sm_layer_stats *)(in->records + in->record_size * (size_t)r) + slot;
        layer_stats(x, t->ne[0], ls);
        if (in->hidden)
            memcpy(in->hidden_rows + (size_t)r * sm_introspector_hidden_floats(in) + (size_t)slot * (size_t)in->n_embd, x,
                   sizeof(float) * (size_t)in->n_embd);
    }
}

/* kq_soft_max-N is [n_kv, n_tokens, n_head, n_stream]: one softmax row per
 * query token and head. */
static void observe_attention(sm_introspector *in, const struct ggml_tensor *t, int32_t slot) {
    const int64_t rows = t->ne[1];
    if (rows <= 0 || in->accumulate) return;
    int64_t heads = t->ne[2] < in->n_head ? t->ne[2] : in->n_head;
    int32_t n = in->n_rows < rows ? in->n_rows : (int32_t)rows;
    for (int32_t r = 0; r < n; r++) {
        float *attn = (float *)(in->records + in->record_size * (size_t)r + stats_bytes(in)) + (size_t)slot * (size_t)in->n_head;
        for (int64_t h = 0; h < heads; h++) {
            const float *p = tensor_row(in, t, rows - n + r, h);
            if (!p) return;
            attn[h] = row_entropy(p, t->ne[0]);
        }
    }
}

bool sm_introspector_cb(struct ggml_tensor *t, bool ask, void *user_data) {
    sm_introspector *in = user_data;
    int32_t l = layer_of(t->name, "l_out");
    bool is_attention = false;
    if (l < 0 && in->attention) {
        l = layer_of(t->name, "kq_soft_max");
        is_attention = l >= 0;
    }
    int32_t slot = l >= 0 && l < in->n_layer_model ? in->slot_of[l] : -1;
    if (ask) return slot >= 0;
    if (slot < 0) return true;
    in->n_calls++;
    if (is_attention) observe_attention(in, t, slot);
    else observe_layer_output(in, t, slot);
    return true; /* false would cancel the graph computation */
}

/* ------------------------------------------------------------------ */
/* Safety rules                                                        */
/* ------------------------------------------------------------------ */

const char *sm_safety_metric_name(sm_safety_metric metric) {
    switch (metric) {
    case SM_SAFETY_MAX_ABS: return "max_abs";
    case SM_SAFETY_NORM: return "norm";
    case SM_SAFETY_NORM_ZSCORE: return "norm_z";
    }
    return "unknown";
}

static bool parse_float_text(const char *text, size_t len, float *out) {
    char buf[64];
    if (len == 0 || len >= sizeof buf) return false;
    memcpy(buf, text, len);
    buf[len] = '\0';
    char *end;
    float v = strtof(buf, &end);
    if (*end != '\0' || !isfinite(v)) return false;
    *out = v;
    return true;
}

static bool parse_int_text(const char *text, size_t len, int32_t *out) {
    char buf[32];
    if (len == 0 || len >= sizeof buf) return false;
    memcpy(buf, text, len);
    buf[len] = '\0';
    char *end;
    long v = strtol(buf, &end, 10);
    if (*end != '\0' || v < -100000 || v > 100000) return false;
    *out = (int32_t)v;
    return true;
}

/* One comma-separated item of a rule. */
static bool parse_rule_item(const char *item, size_t len, sm_safety_rule *rule, bool *has_layer, bool *has_metric,
                            char *msg, size_t msg_size) {
    static const char *const metrics[] = {"max_abs", "norm_z", "norm"}; /* norm_z before its prefix norm */
    static const sm_safety_metric metric_ids[] = {SM_SAFETY_MAX_ABS, SM_SAFETY_NORM_ZSCORE, SM_SAFETY_NORM};
    if (len > 6 && strncmp(item, "layer=", 6) == 0) {
        if (!parse_int_text(item + 6, len - 6, &rule->layer)) {
            snprintf(msg, msg_size, "safety rule: '%.*s' is not a layer number", (int)(len - 6), item + 6);
            return false;
        }
        *has_layer = true;
        return true;
    }
    if (len > 7 && strncmp(item, "action=", 7) == 0) {
        if (len - 7 == 4 && strncmp(item + 7, "stop", 4) == 0) rule->action = SM_SAFETY_STOP;
        else if (len - 7 == 8 && strncmp(item + 7, "resample", 8) == 0) rule->action = SM_SAFETY_RESAMPLE;
        else {
            snprintf(msg, msg_size, "safety rule: action must be resample or stop (got '%.*s')", (int)(len - 7), item + 7);
            return false;
        }
        return true;
    }
    for (size_t m = 0; m < sizeof metrics / sizeof metrics[0]; m++) {
        size_t n = strlen(metrics[m]);
        if (len > n + 1 && strncmp(item, metrics[m], n) == 0 && item[n] == '>') {
            if (!parse_float_text(item + n + 1, len - n - 1, &rule->threshold)) {
                snprintf(msg, msg_size, "safety rule: '%.*s' is not a threshold", (int)(len - n - 1), item + n + 1);
                return false;
            }
            rule->metric = metric_ids[m];
            *has_metric = true;
            return true;
        }
    }
    snprintf(msg, msg_size,
             "safety rule: cannot read '%.*s' (expected layer=L, max_abs>T, norm>T, norm_z>T or action=resample|stop)",
             (int)len, item);
    return false;
}

static sm_status parse_safety_rule(const char *spec, sm_safety_rule *rule, char *msg, size_t msg_size);

sm_status sm_safety_rule_parse(const char *spec, sm_safety_rule *rule, sm_error *err) {
    sm_error scratch;
    if (!err) err = &scratch;
    err->status = parse_safety_rule(spec, rule, err->message, sizeof err->message);
    return err->status;
}

static sm_status parse_safety_rule(const char *spec, sm_safety_rule *rule, char *msg, size_t msg_size) {
    if (!spec || !rule) {
        snprintf(msg, msg_size, "safety rule: nothing given");
        return SM_ERR_INVALID_ARGUMENT;
    }
    *rule = (sm_safety_rule){.action = SM_SAFETY_RESAMPLE};
    bool has_layer = false, has_metric = false;
    for (const char *p = spec; *p;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        if (!parse_rule_item(p, len, rule, &has_layer, &has_metric, msg, msg_size)) return SM_ERR_INVALID_ARGUMENT;
        p += len + (comma ? 1 : 0);
    }
    if (!has_layer || !has_metric) {
        snprintf(msg, msg_size, "safety rule '%s' needs %s (e.g. \"layer=-1,max_abs>8\")", spec,
                 has_layer ? "a condition max_abs>T, norm>T or norm_z>T" : "a layer=L");
        return SM_ERR_INVALID_ARGUMENT;
    }
    return SM_OK;
}

#define ZSCORE_MIN_TOKENS 8

/* The rule's value at `cur`, given the n_prev earlier records (contiguous,
 * record_size apart); NAN when it cannot be computed yet. */
static float rule_value(const sm_introspector *in, const sm_safety_rule *rule, int32_t slot, const void *records,
                        int32_t n_prev, const void *cur) {
    const sm_layer_stats *now = (const sm_layer_stats *)cur + slot;
    switch (rule->metric) {
    case SM_SAFETY_MAX_ABS: return now->max_abs;
    case SM_SAFETY_NORM: return now->norm;
    case SM_SAFETY_NORM_ZSCORE: break;
    }
    if (n_prev < ZSCORE_MIN_TOKENS) return NAN;
    double sum = 0.0, sq = 0.0;
    for (int32_t i = 0; i < n_prev; i++) {
        const sm_layer_stats *ls = (const sm_layer_stats *)((const unsigned char *)records + in->record_size * (size_t)i) + slot;
        sum += ls->norm;
        sq += (double)ls->norm * ls->norm;
    }
    double mean = sum / n_prev, var = sq / n_prev - mean * mean;
    if (!(var > 1e-12)) return NAN;
    return (float)((now->norm - mean) / sqrt(var));
}

/* Resolves every rule's layer to an observed slot; false with a message
 * naming the first rule whose layer is not observed. */
bool sm_safety_rules_check_layers(const sm_introspector *in, const sm_safety_rule *rules, int32_t n, char *msg,
                                  size_t msg_size) {
    for (int32_t i = 0; i < n; i++) {
        if (!in || sm_introspector_slot(in, rules[i].layer) < 0) {
            snprintf(msg, msg_size,
                     "safety rule %d watches layer %d, which the session does not observe (add it to the introspection layers)",
                     i, rules[i].layer);
            return false;
        }
    }
    return true;
}

int32_t sm_safety_check(const sm_introspector *in, const sm_safety_rule *rules, int32_t n_rules, const void *records,
                        int32_t n_prev, const void *cur, float *value, char *desc, size_t desc_size) {
    for (int32_t i = 0; i < n_rules; i++) {
        const sm_safety_rule *r = &rules[i];
        int32_t slot = sm_introspector_slot(in, r->layer);
        if (slot < 0) continue;
        float v = rule_value(in, r, slot, records, n_prev, cur);
        if (!(v > r->threshold)) continue; /* NaN never fires */
        *value = v;
        snprintf(desc, desc_size, "safety rule %d: layer %d %s %.4g > %.4g", i, in->layers[slot],
                 sm_safety_metric_name(r->metric), v, r->threshold);
        return i;
    }
    return -1;
}

/* ------------------------------------------------------------------ */
/* The built-in tool and text forms                                    */
/* ------------------------------------------------------------------ */

static void appendf(char *buf, size_t size, size_t *len, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static void appendf(char *buf, size_t size, size_t *len, const char *fmt, ...) {
    if (*len >= size) return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf + *len, size - *len, fmt, ap);
    va_end(ap);
    if (n > 0) *len += (size_t)n < size - *len ? (size_t)n : size - *len - 1;
}

static float mean_head_entropy(const sm_introspection *in, int32_t l) {
    double sum = 0.0;
    for (int32_t h = 0; h < in->n_heads; h++) sum += in->attn_entropy[(size_t)l * (size_t)in->n_heads + (size_t)h];
    return in->n_heads > 0 ? (float)(sum / in->n_heads) : NAN;
}

char *sm_tool_introspect(const sm_tool_context *ctx, void *user_data) {
    (void)user_data;
    const sm_introspection *in = ctx->introspection;
    size_t size = 64 + (in ? (size_t)in->n_layers * 96 : 64), len = 0;
    char *text = malloc(size);
    if (!text) return NULL;
    text[0] = '\0';
    if (!in) {
        appendf(text, size, &len, " (no activations observed)");
        return text;
    }
    appendf(text, size, &len, " (");
    for (int32_t l = 0; l < in->n_layers; l++) {
        const sm_layer_stats *ls = &in->layers[l];
        appendf(text, size, &len, "%slayer %d: norm %.2f, mean %.3f, max %.2f", l ? "; " : "", ls->layer, ls->norm,
                ls->mean, ls->max_abs);
        if (in->n_heads > 0) appendf(text, size, &len, ", attention entropy %.2f", mean_head_entropy(in, l));
    }
    appendf(text, size, &len, ")");
    return text;
}

/* 7 significant digits, as every float in the JSON forms (events.c). */
static double json_float7(float value) {
    if (!isfinite(value)) return (double)value; /* cJSON writes null */
    char buf[32];
    snprintf(buf, sizeof buf, "%.7g", (double)value);
    return strtod(buf, NULL);
}

/* {"layers":[{"layer":L,"norm":..,"mean":..,"max_abs":..,"attn_entropy":[..]}]} */
cJSON *sm_introspection_to_cjson(const sm_introspection *in) {
    cJSON *json = cJSON_CreateObject();
    cJSON *layers = json ? cJSON_AddArrayToObject(json, "layers") : NULL;
    for (int32_t l = 0; layers && l < in->n_layers; l++) {
        const sm_layer_stats *ls = &in->layers[l];
        cJSON *o = cJSON_CreateObject();
        if (!o) break;
        cJSON_AddNumberToObject(o, "layer", ls->layer);
        sm_json_add_float(o, "norm", ls->norm);
        sm_json_add_float(o, "mean", ls->mean);
        sm_json_add_float(o, "max_abs", ls->max_abs);
        if (in->n_heads > 0) {
            cJSON *heads = cJSON_AddArrayToObject(o, "attn_entropy");
            for (int32_t h = 0; heads && h < in->n_heads; h++)
                cJSON_AddItemToArray(heads, cJSON_CreateNumber(json_float7(in->attn_entropy[(size_t)l * (size_t)in->n_heads + (size_t)h])));
        }
        cJSON_AddItemToArray(layers, o);
    }
    return json;
}

/* {"n_branches":k,"depth":d,"chosen":c,"entropy":H,"branches":[{"token":t,"score":s}]} */
cJSON *sm_lookahead_to_cjson(const sm_lookahead_info *info) {
    cJSON *json = cJSON_CreateObject();
    if (!json) return NULL;
    cJSON_AddNumberToObject(json, "n_branches", info->n_branches);
    cJSON_AddNumberToObject(json, "depth", info->depth);
    cJSON_AddNumberToObject(json, "chosen", info->chosen);
    sm_json_add_float(json, "entropy", info->entropy);
    cJSON *branches = cJSON_AddArrayToObject(json, "branches");
    for (int32_t b = 0; branches && b < info->n_branches; b++) {
        cJSON *o = cJSON_CreateObject();
        if (!o) break;
        cJSON_AddNumberToObject(o, "token", info->first[b]);
        sm_json_add_float(o, "score", info->score[b]);
        cJSON_AddItemToArray(branches, o);
    }
    return json;
}
