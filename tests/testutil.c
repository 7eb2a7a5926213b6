#include "testutil.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

const char *tu_model_path(const char *name) {
    static char path[4096];
    const char *dir = getenv("SM_MODELS");
    if (!dir) dir = "../shared/models";
    snprintf(path, sizeof path, "%s/%s", dir, name);
    if (access(path, R_OK) != 0) fail_msg("test model missing or unreadable: %s", path);
    return path;
}

sm_model *tu_load_model(const char *name) {
    sm_set_llama_logging(false);
    sm_model_params mp = sm_model_default_params();
    sm_error err = {0};
    sm_model *m = sm_model_load(tu_model_path(name), &mp, &err);
    if (!m) fail_msg("cannot load %s: %s", name, err.message);
    return m;
}

sm_gen_params tu_greedy_params(int32_t n_predict) {
    sm_gen_params gp = sm_gen_default_params();
    gp.n_predict = n_predict;
    gp.sampling.temperature = 0.0f;
    gp.sampling.repeat_penalty = 1.0f;
    gp.policy.enabled = false;
    return gp;
}

sm_batch *tu_open_batch(sm_model *m, int32_t n_seq, uint32_t n_ctx_seq, uint32_t n_batch, bool kv_unified) {
    sm_batch_params bp = sm_batch_default_params();
    bp.n_seq = n_seq;
    bp.n_ctx_seq = n_ctx_seq;
    bp.n_batch = n_batch;
    bp.n_threads = 1;
    bp.kv_unified = kv_unified;
    sm_error err = {0};
    sm_batch *b = sm_batch_new(&m, 1, &bp, &err);
    if (!b) fail_msg("sm_batch_new: %s", err.message);
    return b;
}

sm_session *tu_batch_session(sm_model *m, sm_batch *batch, uint32_t n_ctx) {
    sm_session_params sp = tu_session_params(n_ctx);
    sp.batch = batch;
    sm_error err = {0};
    sm_session *s = sm_session_new(m, &sp, &err);
    if (!s) fail_msg("a session on the batch: %s", err.message);
    return s;
}

sm_session_params tu_session_params(uint32_t n_ctx) {
    sm_session_params sp = sm_session_default_params();
    sp.n_ctx = n_ctx;
    sp.n_threads = 1;
    return sp;
}

sm_session *tu_open_session(sm_model *m, const sm_session_params *params) {
    sm_session_params defaults = tu_session_params(512);
    sm_error err = {0};
    sm_session *s = sm_session_new(m, params ? params : &defaults, &err);
    if (!s) fail_msg("cannot create a session: %s", err.message);
    return s;
}

float tu_max_abs_diff(const float *a, const float *b, int32_t n) {
    float d = 0.0f;
    for (int32_t i = 0; i < n; i++) d = fmaxf(d, fabsf(a[i] - b[i]));
    return d;
}

typedef struct backtrack_once {
    int32_t position, count;
    bool fired;
} backtrack_once;

static int32_t backtrack_once_decide(void *state, const sm_token_view *view) {
    backtrack_once *b = state;
    if (b->fired || view->position != b->position) return 0;
    b->fired = true;
    return b->count;
}

sm_operator *tu_backtrack_once(int32_t position, int32_t count) {
    static const sm_operator_vtable vt = {.name = "backtrack_once", .decide = backtrack_once_decide, .free_state = free};
    backtrack_once *b = calloc(1, sizeof *b);
    *b = (backtrack_once){position, count, false};
    return sm_operator_new(&vt, b);
}

int32_t tu_tokenize(const sm_model *m, const char *text, bool add_special, bool parse_special, sm_token *out,
                    int32_t max) {
    sm_tokens toks;
    sm_error err = {0};
    if (sm_tokenize(m, text, strlen(text), add_special, parse_special, &toks, &err) != SM_OK)
        fail_msg("tokenizing '%s': %s", text, err.message);
    if (toks.n > max) fail_msg("'%s' is %d tokens, more than %d", text, toks.n, max);
    if (out && toks.n > 0) memcpy(out, toks.data, sizeof *out * (size_t)toks.n);
    int32_t n = toks.n;
    sm_tokens_free(&toks);
    return n;
}
