/*
 * Preset files: what `llama_selfmod tune` found best, as JSON, loaded by
 * --preset FILE. A file names a policy preset and the values that refine
 * it; every key is read or refused, none is ignored.
 *
 *   {"preset": "calibrated", "temperature": 0.3, "repeat_penalty": 1.1,
 *    "max_retractions": 6, "window": 5, "retract": -1,
 *    "measured": {...}}            (tune's record of how it scored: kept as is)
 */
#include "internal.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *read_file(const char *path, sm_error *err) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        sm_error_set(err, SM_ERR_IO, "cannot read preset file '%s'", path);
        return NULL;
    }
    char *text = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len + 4096 + 1 > cap) {
            cap = cap ? cap * 2 : 8192;
            if (cap > (1u << 20)) { /* a preset is a few hundred bytes */
                free(text);
                fclose(f);
                sm_error_set(err, SM_ERR_INVALID_ARGUMENT, "preset file '%s' is larger than 1 MB", path);
                return NULL;
            }
            char *grown = realloc(text, cap);
            if (!grown) break;
            text = grown;
        }
        size_t got = fread(text + len, 1, cap - len - 1, f);
        len += got;
        if (got == 0) break;
    }
    fclose(f);
    if (!text) sm_error_set(err, SM_ERR_NO_MEMORY, "out of memory");
    else text[len] = '\0';
    return text;
}

static bool number_in(const cJSON *v, double lo, double hi, double *out) {
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || v->valuedouble < lo || v->valuedouble > hi) return false;
    *out = v->valuedouble;
    return true;
}

sm_status sm_gen_params_load_preset(const char *path, sm_gen_params *gp, sm_error *err) {
    sm_error scratch;
    if (!err) err = &scratch;
    if (!path || !gp) {
        sm_error_set(err, SM_ERR_INVALID_ARGUMENT, "no preset file or parameters given");
        return SM_ERR_INVALID_ARGUMENT;
    }
    char *text = read_file(path, err);
    if (!text) return err->status;
    cJSON *root = cJSON_Parse(text);
    free(text);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        sm_error_set(err, SM_ERR_INVALID_ARGUMENT, "preset file '%s' is not a JSON object", path);
        return SM_ERR_INVALID_ARGUMENT;
    }
    sm_gen_params out = *gp;
    sm_status st = SM_OK;
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(root, "preset");
    if (name && (!cJSON_IsString(name) || sm_policy_preset(&out.policy, name->valuestring, err) != SM_OK)) {
        if (!cJSON_IsString(name)) sm_error_set(err, SM_ERR_INVALID_ARGUMENT, "preset file '%s': \"preset\" must be a name", path);
        st = SM_ERR_INVALID_ARGUMENT;
    }
    const cJSON *v;
    cJSON_ArrayForEach(v, root) {
        if (st != SM_OK) break;
        const char *k = v->string;
        double x;
        bool ok = true;
        if (strcmp(k, "preset") == 0 || strcmp(k, "measured") == 0 || strcmp(k, "comment") == 0) continue;
        else if (strcmp(k, "temperature") == 0) ok = number_in(v, 0, 100, &x) && (out.sampling.temperature = (float)x, true);
        else if (strcmp(k, "repeat_penalty") == 0) ok = number_in(v, 0.01, 100, &x) && (out.sampling.repeat_penalty = (float)x, true);
        else if (strcmp(k, "max_retractions") == 0) ok = number_in(v, 0, 1 << 20, &x) && x == floor(x) && (out.policy.max_retractions = (int32_t)x, true);
        else if (strcmp(k, "window") == 0) ok = number_in(v, 1, 4096, &x) && x == floor(x) && (out.policy.window = (int32_t)x, true);
        else if (strcmp(k, "retract") == 0) ok = number_in(v, -1, 1, &x) && x == floor(x) && (out.policy.retract = (int32_t)x, true);
        else {
            sm_error_set(err, SM_ERR_INVALID_ARGUMENT, "preset file '%s': unknown key \"%s\" (keys: preset, temperature, "
                         "repeat_penalty, max_retractions, window, retract, measured, comment)", path, k);
            st = SM_ERR_INVALID_ARGUMENT;
            break;
        }
        if (!ok) {
            sm_error_set(err, SM_ERR_INVALID_ARGUMENT, "preset file '%s': \"%s\" is out of range or not a number", path, k);
            st = SM_ERR_INVALID_ARGUMENT;
        }
    }
    cJSON_Delete(root);
    if (st == SM_OK && sm_gen_params_validate(&out, err) != SM_OK) st = err->status;
    if (st == SM_OK) {
        *gp = out;
        err->status = SM_OK;
    }
    return st;
}
