/*
 * Control vectors: llama.cpp's GGUF format (tensors direction.<layer>, F32,
 * n_embd each; layer 0 never exists), loading and summing several files
 * with scales as llama.cpp's common code does, writing them, and computing
 * one from contrasting prompts (the mean difference of layer outputs).
 */
#include "internal.h"

#include "ggml.h"
#include "gguf.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void sm_control_vector_free(sm_control_vector *cv) {
    if (!cv) return;
    free(cv->data);
    *cv = (sm_control_vector){0};
}

/* Makes room for layers 1..n_layers, new ones zero. */
static int grow(sm_control_vector *cv, int32_t n_layers) {
    if (n_layers <= cv->n_layers) return 0;
    float *d = realloc(cv->data, sizeof(float) * (size_t)cv->n_embd * (size_t)n_layers);
    if (!d) return -1;
    memset(d + (size_t)cv->n_embd * (size_t)cv->n_layers, 0,
           sizeof(float) * (size_t)cv->n_embd * (size_t)(n_layers - cv->n_layers));
    cv->data = d;
    cv->n_layers = n_layers;
    return 0;
}

/* "FILE" or "FILE:SCALE": the scale is what follows the last ':' when it
 * is a number, so paths with colons still work. */
static void split_spec(const char *spec, char *path, size_t path_size, float *scale) {
    *scale = 1.0f;
    snprintf(path, path_size, "%s", spec);
    char *colon = strrchr(path, ':');
    if (!colon || !colon[1]) return;
    char *end;
    float v = strtof(colon + 1, &end);
    if (*end != '\0' || !isfinite(v)) return;
    *scale = v;
    *colon = '\0';
}

/* "direction.N" -> N, or -1. */
static int32_t direction_layer(const char *name) {
    if (strncmp(name, "direction.", 10) != 0 || !name[10]) return -1;
    char *end;
    long v = strtol(name + 10, &end, 10);
    return *end == '\0' && v >= 0 && v < 100000 ? (int32_t)v : -1;
}

static sm_status add_file(sm_control_vector *cv, const char *path, float scale, sm_error *err) {
    if (access(path, R_OK) != 0) {
        sm_error_set(err, SM_ERR_IO, "cannot read control vector '%s': %s", path, strerror(errno));
        return SM_ERR_IO;
    }
    struct ggml_context *ctx = NULL;
    struct gguf_init_params gp = {.no_alloc = false, .ctx = &ctx};
    struct gguf_context *g = gguf_init_from_file(path, gp);
    if (!g) {
        sm_error_set(err, SM_ERR_IO, "'%s' is not a readable GGUF file", path);
        return SM_ERR_IO;
    }
    sm_status st = SM_OK;
    int64_t n = gguf_get_n_tensors(g);
    if (n == 0) st = SM_ERR_INVALID_ARGUMENT, sm_error_set(err, st, "control vector '%s' holds no direction tensors", path);
    for (int64_t i = 0; i < n && st == SM_OK; i++) {
        const char *name = gguf_get_tensor_name(g, i);
        int32_t layer = direction_layer(name);
        struct ggml_tensor *t = ggml_get_tensor(ctx, name);
        if (layer < 1) {
            st = SM_ERR_INVALID_ARGUMENT;
            sm_error_set(err, st, "control vector '%s': tensor '%s' is not direction.<layer> with a layer >= 1", path, name);
        } else if (!t || t->type != GGML_TYPE_F32 || ggml_n_dims(t) != 1) {
            st = SM_ERR_INVALID_ARGUMENT;
            sm_error_set(err, st, "control vector '%s': tensor '%s' must be a 1-D F32 tensor", path, name);
        } else if (cv->n_embd != 0 && ggml_nelements(t) != cv->n_embd) {
            st = SM_ERR_INVALID_ARGUMENT;
            sm_error_set(err, st, "control vector '%s': tensor '%s' has %lld values, not %d like the others", path, name,
                         (long long)ggml_nelements(t), cv->n_embd);
        } else {
            cv->n_embd = (int32_t)ggml_nelements(t);
            if (grow(cv, layer) != 0) {
                st = SM_ERR_NO_MEMORY;
                sm_error_set(err, st, "out of memory");
                break;
            }
            const float *src = t->data;
            float *dst = cv->data + (size_t)(layer - 1) * (size_t)cv->n_embd;
            for (int32_t j = 0; j < cv->n_embd; j++) dst[j] += src[j] * scale;
        }
    }
    gguf_free(g);
    ggml_free(ctx);
    return st;
}

sm_status sm_control_vector_load(const char *const *specs, int32_t n_specs, sm_control_vector *out, sm_error *err) {
    if (!out) return SM_ERR_INVALID_ARGUMENT;
    *out = (sm_control_vector){0};
    if (n_specs < 1 || !specs) {
        sm_error_set(err, SM_ERR_INVALID_ARGUMENT, "no control vector file given");
        return SM_ERR_INVALID_ARGUMENT;
    }
    for (int32_t i = 0; i < n_specs; i++) {
        char path[4096];
        float scale;
        if (!specs[i] || !*specs[i]) {
            sm_error_set(err, SM_ERR_INVALID_ARGUMENT, "control vector %d: empty file name", i);
            sm_control_vector_free(out);
            return SM_ERR_INVALID_ARGUMENT;
        }
        split_spec(specs[i], path, sizeof path, &scale);
        const char *colon = strrchr(specs[i], ':');
        if (access(path, R_OK) != 0 && colon && strcmp(path, specs[i]) == 0) {
            /* "FILE:SCALE" with a scale that is no number, or a path that does not exist */
            char prefix[4096];
            snprintf(prefix, sizeof prefix, "%.*s", (int)(colon - specs[i]), specs[i]);
            if (access(prefix, R_OK) == 0) {
                sm_error_set(err, SM_ERR_INVALID_ARGUMENT, "control vector '%s': scale '%s' is not a number (FILE:SCALE)",
                             specs[i], colon + 1);
                sm_control_vector_free(out);
                return SM_ERR_INVALID_ARGUMENT;
            }
        }
        sm_status st = add_file(out, path, scale, err);
        if (st != SM_OK) {
            sm_control_vector_free(out);
            return st;
        }
    }
    return SM_OK;
}

static bool all_zero(const float *x, int32_t n) {
    for (int32_t j = 0; j < n; j++)
        if (x[j] != 0.0f) return false;
    return true;
}

sm_status sm_control_vector_save(const sm_control_vector *cv, const char *path, const char *model_hint, sm_error *err) {
    if (!cv || !cv->data || cv->n_embd < 1 || cv->n_layers < 1 || !path || !*path) {
        sm_error_set(err, SM_ERR_INVALID_ARGUMENT, "nothing to save: an empty control vector or no path");
        return SM_ERR_INVALID_ARGUMENT;
    }
    struct ggml_init_params ip = {
        .mem_size = (size_t)cv->n_layers * (ggml_tensor_overhead() + sizeof(float) * (size_t)cv->n_embd) + 1024,
        .mem_buffer = NULL,
        .no_alloc = false,
    };
    struct ggml_context *ctx = ggml_init(ip);
    struct gguf_context *g = gguf_init_empty();
    if (!ctx || !g) {
        if (ctx) ggml_free(ctx);
        if (g) gguf_free(g);
        sm_error_set(err, SM_ERR_NO_MEMORY, "out of memory");
        return SM_ERR_NO_MEMORY;
    }
    gguf_set_val_str(g, "general.architecture", "controlvector");
    gguf_set_val_str(g, "controlvector.model_hint", model_hint ? model_hint : "");
    int32_t written = 0;
    for (int32_t il = 1; il <= cv->n_layers; il++) {
        const float *src = cv->data + (size_t)(il - 1) * (size_t)cv->n_embd;
        if (all_zero(src, cv->n_embd)) continue;
        struct ggml_tensor *t = ggml_new_tensor_1d(ctx, GGML_TYPE_F32, cv->n_embd);
        ggml_format_name(t, "direction.%d", il);
        memcpy(t->data, src, sizeof(float) * (size_t)cv->n_embd);
        gguf_add_tensor(g, t);
        written++;
    }
    gguf_set_val_i32(g, "controlvector.layer_count", written);
    sm_status st = SM_OK;
    if (written == 0) {
        st = SM_ERR_INVALID_ARGUMENT;
        sm_error_set(err, st, "the control vector is zero in every layer: nothing to save");
    } else if (!gguf_write_to_file(g, path, false)) {
        st = SM_ERR_IO;
        sm_error_set(err, st, "cannot write control vector '%s'", path);
    }
    gguf_free(g);
    ggml_free(ctx);
    return st;
}

/* ------------------------------------------------------------------ */
/* Steering vectors from contrasting prompts                           */
/* ------------------------------------------------------------------ */

sm_steer_params sm_steer_default_params(void) { return (sm_steer_params){.n_threads = 0, .n_ctx = 0}; }

typedef struct steer_run {
    struct llama_context *ctx;
    const sm_model *model;
    sm_introspector *intro;
    int32_t n_ctx;
    llama_batch batch;
    float *mean;               /* n_embd scratch                          */
} steer_run;

/* Adds each observed layer's mean output over the prompt's tokens to acc
 * (n_layers x n_embd). */
static sm_status accumulate_prompt(steer_run *run, const char *prompt, double *acc, sm_error *err) {
    const sm_model *m = run->model;
    sm_tokens toks;
    sm_status st = sm_tokenize(m, prompt, strlen(prompt), true, false, &toks, err);
    if (st != SM_OK) return st;
    int32_t n = toks.n;
    if (n > run->n_ctx) {
        sm_tokens_free(&toks);
        sm_error_set(err, SM_ERR_PROMPT_TOO_LONG, "steering prompt '%.60s' is %d tokens, more than the context %d", prompt, n,
                     run->n_ctx);
        return SM_ERR_PROMPT_TOO_LONG;
    }
    int32_t skip = n > 0 && toks.data[0] == llama_vocab_bos(m->vocab) ? 1 : 0;
    if (n - skip < 1) {
        sm_tokens_free(&toks);
        sm_error_set(err, SM_ERR_INVALID_ARGUMENT, "steering prompt '%.60s' has no tokens", prompt);
        return SM_ERR_INVALID_ARGUMENT;
    }
    run->batch.n_tokens = 0;
    for (int32_t i = 0; i < n; i++) sm_llama_batch_add(&run->batch, toks.data[i], i, 0, true); /* every row to the last layer */
    sm_tokens_free(&toks);
    llama_memory_clear(llama_get_memory(run->ctx), true);
    if (sm_introspector_accumulate(run->intro, true, skip) != 0) {
        sm_error_set(err, SM_ERR_NO_MEMORY, "out of memory");
        return SM_ERR_NO_MEMORY;
    }
    int rc = sm_decode(run->ctx, &run->batch);
    if (rc != 0) {
        sm_error_set(err, SM_ERR_DECODE, "llama_decode failed (code %d) on steering prompt '%.60s'", rc, prompt);
        return SM_ERR_DECODE;
    }
    int32_t n_embd = sm_introspector_n_embd(run->intro);
    for (int32_t l = 0; l < sm_introspector_n_layers(run->intro); l++) {
        if (!sm_introspector_mean(run->intro, l, run->mean)) {
            sm_error_set(err, SM_ERR_STATE, "layer %d's output was never seen while decoding '%.60s'",
                         sm_introspector_layers(run->intro)[l], prompt);
            return SM_ERR_STATE;
        }
        for (int32_t j = 0; j < n_embd; j++) acc[(size_t)l * (size_t)n_embd + (size_t)j] += run->mean[j];
    }
    return SM_OK;
}

static sm_status check_steer_params(const sm_model *model, const sm_steer_params *p, sm_error *err) {
    if (!model || !p) {
        sm_error_set(err, SM_ERR_INVALID_ARGUMENT, "steer: no model or parameters");
        return SM_ERR_INVALID_ARGUMENT;
    }
    if (p->n_positive < 1 || p->n_negative < 1 || !p->positive || !p->negative) {
        sm_error_set(err, SM_ERR_INVALID_ARGUMENT, "steer needs at least one positive and one negative prompt (got %d and %d)",
                     p->n_positive, p->n_negative);
        return SM_ERR_INVALID_ARGUMENT;
    }
    int32_t n_layer = llama_model_n_layer(model->lm);
    for (int32_t i = 0; i < p->n_layers; i++) {
        int32_t l = p->layers[i] < 0 ? n_layer + p->layers[i] : p->layers[i];
        if (l < 1 || l >= n_layer) {
            sm_error_set(err, SM_ERR_INVALID_ARGUMENT,
                         "steer layer %d: control vectors apply to layers 1 to %d of this model (llama.cpp never steers layer 0)",
                         p->layers[i], n_layer - 1);
            return SM_ERR_INVALID_ARGUMENT;
        }
    }
    if (n_layer < 2) {
        sm_error_set(err, SM_ERR_INVALID_ARGUMENT, "a model with %d layer(s) has no layer a control vector can steer", n_layer);
        return SM_ERR_INVALID_ARGUMENT;
    }
    return SM_OK;
}

static sm_status open_steer_run(sm_model *model, const sm_steer_params *p, steer_run *run, sm_error *err) {
    int32_t n_layer = llama_model_n_layer(model->lm);
    int32_t *layers = malloc(sizeof(int32_t) * (size_t)n_layer);
    if (!layers) return SM_ERR_NO_MEMORY;
    int32_t n = 0;
    if (p->n_layers > 0) {
        for (int32_t i = 0; i < p->n_layers; i++) layers[n++] = p->layers[i];
    } else {
        for (int32_t l = 1; l < n_layer; l++) layers[n++] = l;
    }
    char msg[256];
    run->model = model;
    run->intro = sm_introspector_new(model->lm, layers, n, false, false, false, 1, msg, sizeof msg);
    free(layers);
    if (!run->intro) {
        sm_error_set(err, SM_ERR_INVALID_ARGUMENT, "%s", msg);
        return SM_ERR_INVALID_ARGUMENT;
    }
    int32_t n_train = llama_model_n_ctx_train(model->lm);
    uint32_t n_ctx = p->n_ctx ? p->n_ctx : (uint32_t)(n_train > 0 && n_train < 4096 ? n_train : 4096);
    sm_context_opts o = {
        .n_ctx = n_ctx,
        .n_batch = n_ctx, /* one prompt is one ubatch: rows are positions */
        .n_threads = p->n_threads,
        .cb_eval = sm_introspector_cb,
        .cb_eval_user_data = run->intro,
        .what = "a steering context",
    };
    run->ctx = sm_context_new(model, &o, err);
    if (!run->ctx) return SM_ERR_CONTEXT;
    run->n_ctx = (int32_t)llama_n_ctx(run->ctx);
    run->batch = llama_batch_init(run->n_ctx, 0, 1);
    run->mean = malloc(sizeof(float) * (size_t)llama_model_n_embd(model->lm));
    if (!run->mean) return SM_ERR_NO_MEMORY;
    return SM_OK;
}

static void close_steer_run(steer_run *run) {
    if (run->ctx) {
        llama_batch_free(run->batch);
        llama_free(run->ctx);
    }
    sm_introspector_free(run->intro);
    free(run->mean);
}

/* The mean over prompts of each prompt's per-layer mean output. */
static sm_status mean_of_set(steer_run *run, const char *const *prompts, int32_t n, double *acc, sm_error *err) {
    size_t size = (size_t)sm_introspector_n_layers(run->intro) * (size_t)sm_introspector_n_embd(run->intro);
    memset(acc, 0, sizeof(double) * size);
    for (int32_t i = 0; i < n; i++) {
        sm_status st = accumulate_prompt(run, prompts[i] ? prompts[i] : "", acc, err);
        if (st != SM_OK) return st;
    }
    for (size_t j = 0; j < size; j++) acc[j] /= n;
    return SM_OK;
}

sm_status sm_steer_compute(sm_model *model, const sm_steer_params *p, sm_control_vector *out, sm_error *err) {
    if (out) *out = (sm_control_vector){0};
    sm_status st = check_steer_params(model, p, err);
    if (st != SM_OK || !out) return st != SM_OK ? st : SM_ERR_INVALID_ARGUMENT;
    steer_run run = {0};
    st = open_steer_run(model, p, &run, err);
    double *pos = NULL, *neg = NULL;
    if (st == SM_OK) {
        size_t size = (size_t)sm_introspector_n_layers(run.intro) * (size_t)sm_introspector_n_embd(run.intro);
        pos = malloc(sizeof(double) * size);
        neg = malloc(sizeof(double) * size);
        if (!pos || !neg) st = SM_ERR_NO_MEMORY;
    }
    if (st == SM_OK) st = mean_of_set(&run, p->positive, p->n_positive, pos, err);
    if (st == SM_OK) st = mean_of_set(&run, p->negative, p->n_negative, neg, err);
    if (st == SM_OK) {
        int32_t n_embd = sm_introspector_n_embd(run.intro);
        out->n_embd = n_embd;
        if (grow(out, llama_model_n_layer(model->lm) - 1) != 0) st = SM_ERR_NO_MEMORY;
        for (int32_t l = 0; st == SM_OK && l < sm_introspector_n_layers(run.intro); l++) {
            int32_t il = sm_introspector_layers(run.intro)[l];
            float *dst = out->data + (size_t)(il - 1) * (size_t)n_embd;
            for (int32_t j = 0; j < n_embd; j++)
                dst[j] = (float)(pos[(size_t)l * (size_t)n_embd + (size_t)j] - neg[(size_t)l * (size_t)n_embd + (size_t)j]);
        }
    }
    if (st == SM_ERR_NO_MEMORY) sm_error_set(err, st, "out of memory");
    if (st != SM_OK) sm_control_vector_free(out);
    free(pos);
    free(neg);
    close_steer_run(&run);
    return st;
}
