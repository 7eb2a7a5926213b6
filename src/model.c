/* Loading models, tokenizing, and llama.cpp's logging. */
#include "internal.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* llama.cpp's logger is process-wide, so this switch is too. The last
 * error line is kept per thread so a failed load can say why. */
static atomic_bool llama_logging_enabled = true;
static _Thread_local char last_log_error[256];

static void log_callback(enum ggml_log_level level, const char *text, void *user_data) {
    (void)user_data;
    /* The first error line since the last clear says why; later ones only
     * say that loading failed. */
    if (level == GGML_LOG_LEVEL_ERROR && last_log_error[0] == '\0') {
        snprintf(last_log_error, sizeof last_log_error, "%s", text);
        size_t n = strlen(last_log_error);
        while (n > 0 && (last_log_error[n - 1] == '\n' || last_log_error[n - 1] == '\r'))
            last_log_error[--n] = '\0';
    }
    /* Warnings and errors only: llama.cpp's INFO lines describe every
     * tensor and would bury the generation. CONT continues the last line. */
    static _Thread_local bool last_shown;
    bool show = level == GGML_LOG_LEVEL_CONT ? last_shown : level >= GGML_LOG_LEVEL_WARN;
    last_shown = show;
    if (atomic_load(&llama_logging_enabled) && show) fputs(text, stderr);
}

void sm_set_llama_logging(bool enabled) {
    atomic_store(&llama_logging_enabled, enabled);
    llama_log_set(log_callback, NULL);
}

const char *sm_llama_last_log_error(void) { return last_log_error; }
void sm_llama_clear_log_error(void) { last_log_error[0] = '\0'; }

sm_model_params sm_model_default_params(void) {
    return (sm_model_params){.n_gpu_layers = 0};
}

/* Says precisely what is wrong with a path before llama.cpp tries it. */
static bool check_gguf_file(const char *path, sm_error *err) {
    struct stat st;
    if (stat(path, &st) != 0) {
        sm_error_set(err, SM_ERR_IO, "cannot open model '%s': %s", path, strerror(errno));
        return false;
    }
    if (S_ISDIR(st.st_mode)) {
        sm_error_set(err, SM_ERR_IO, "model path '%s' is a directory, not a GGUF file", path);
        return false;
    }
    FILE *f = fopen(path, "rb");
    if (!f) {
        sm_error_set(err, SM_ERR_IO, "cannot read model '%s': %s", path, strerror(errno));
        return false;
    }
    char magic[4] = {0};
    size_t got = fread(magic, 1, 4, f);
    fclose(f);
    if (got < 4 || memcmp(magic, "GGUF", 4) != 0) {
        sm_error_set(err, SM_ERR_MODEL, "'%s' is not a GGUF model file (%s)", path,
                     got < 4 ? "file is shorter than the 4-byte GGUF magic" : "wrong magic bytes");
        return false;
    }
    return true;
}

typedef struct progress_bridge {
    sm_progress_fn fn;
    void *user_data;
} progress_bridge;

static bool on_load_progress(float progress, void *user_data) {
    progress_bridge *b = user_data;
    b->fn(progress, b->user_data);
    return true;
}

sm_model *sm_model_load(const char *path, const sm_model_params *params, sm_error *err) {
    if (!path || !*path) {
        sm_error_set(err, SM_ERR_INVALID_ARGUMENT, "no model path given");
        return NULL;
    }
    if (!check_gguf_file(path, err)) return NULL;
    sm_model_params defaults = sm_model_default_params();
    if (!params) params = &defaults;

    llama_backend_init();
    llama_log_set(log_callback, NULL);
    sm_llama_clear_log_error();

    struct llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = params->n_gpu_layers;
    progress_bridge bridge = {params->progress, params->progress_user_data};
    if (params->progress) {
        mp.progress_callback = on_load_progress;
        mp.progress_callback_user_data = &bridge;
    }
    struct llama_model *lm = llama_model_load_from_file(path, mp);
    if (!lm) {
        const char *why = sm_llama_last_log_error();
        sm_error_set(err, SM_ERR_MODEL, "failed to load model '%s': %s", path,
                     *why ? why : "llama.cpp could not read it (truncated or corrupt file?)");
        return NULL;
    }
    sm_model *m = calloc(1, sizeof *m);
    if (!m || !(m->path = strdup(path))) {
        free(m);
        llama_model_free(lm);
        sm_error_set(err, SM_ERR_NO_MEMORY, "out of memory loading '%s'", path);
        return NULL;
    }
    m->lm = lm;
    m->vocab = llama_model_get_vocab(lm);
    m->n_vocab = llama_vocab_n_tokens(m->vocab);
    llama_model_desc(lm, m->description, sizeof m->description);
    return m;
}

void sm_model_free(sm_model *model) {
    if (!model) return;
    llama_model_free(model->lm);
    free(model->path);
    free(model);
}

const char *sm_model_path(const sm_model *m) { return m->path; }
const char *sm_model_description(const sm_model *m) { return m->description; }
int32_t sm_model_n_vocab(const sm_model *m) { return m->n_vocab; }
int32_t sm_model_n_ctx_train(const sm_model *m) { return llama_model_n_ctx_train(m->lm); }
struct llama_model *sm_model_llama(const sm_model *m) { return m->lm; }

int32_t sm_tokenize(const sm_model *m, const char *text, sm_token *tokens, int32_t max_tokens,
                    bool add_special, bool parse_special) {
    size_t len = strlen(text);
    if (len > INT32_MAX) return INT32_MIN;
    return llama_tokenize(m->vocab, text, (int32_t)len, tokens, max_tokens, add_special, parse_special);
}

int32_t sm_detokenize(const sm_model *m, const sm_token *tokens, int32_t n_tokens, char *text,
                      int32_t max_bytes) {
    int32_t n = llama_detokenize(m->vocab, tokens, n_tokens, text, max_bytes, false, false);
    if (n >= 0 && n < max_bytes) text[n] = '\0';
    else if (n >= 0) return -(n + 1); /* no room for the terminating NUL */
    return n;
}
