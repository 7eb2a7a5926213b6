#include "testutil.h"
#include <stdio.h>
#include <stdlib.h>
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
