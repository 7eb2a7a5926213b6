/*
 * memlog.c - the JSONL memory file: one complete line per generation.
 *
 * Each record is written with one write() to an O_APPEND descriptor and
 * synced, so a record is never interleaved with another writer's and a
 * killed process leaves at most its own line incomplete. When the file
 * ends in such an incomplete line, the next record starts on a new line,
 * so every complete record stays readable.
 */
#include "selfmod.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "json_forms.h"

struct sm_memlog {
    int fd;
    sm_memlog_format format;
    bool can_read; /* opened read-write, so the last byte can be checked */
    char *path;
};

static void set_error(sm_error *err, sm_status status, const char *fmt, ...) {
    if (!err) return;
    err->status = status;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
}

/* Read access only serves the last-byte check, so a file that may be
 * appended to but not read is still accepted. */
static int open_for_append(const char *path, bool *can_read) {
    const int flags = O_APPEND | O_CREAT | O_CLOEXEC;
    int fd = open(path, O_RDWR | flags, 0644);
    *can_read = fd >= 0;
    if (fd < 0 && errno == EACCES) fd = open(path, O_WRONLY | flags, 0644);
    return fd;
}

sm_memlog *sm_memlog_open(const char *path, sm_error *err) {
    if (!path || !*path) {
        set_error(err, SM_ERR_INVALID_ARGUMENT, "memory file path is empty");
        return NULL;
    }
    bool can_read = false;
    int fd = open_for_append(path, &can_read);
    if (fd < 0) {
        set_error(err, SM_ERR_IO, "cannot open memory file '%s' for appending: %s", path,
                  strerror(errno));
        return NULL;
    }
    sm_memlog *log = calloc(1, sizeof *log);
    char *path_copy = strdup(path);
    if (!log || !path_copy) {
        free(log);
        free(path_copy);
        close(fd);
        set_error(err, SM_ERR_NO_MEMORY, "out of memory opening memory file '%s'", path);
        return NULL;
    }
    log->fd = fd;
    log->can_read = can_read;
    log->path = path_copy;
    return log;
}

bool sm_memlog_format_from_name(const char *name, sm_memlog_format *format) {
    if (!name) return false;
    if (strcmp(name, "native") == 0) *format = SM_MEMLOG_NATIVE;
    else if (strcmp(name, "original") == 0) *format = SM_MEMLOG_ORIGINAL;
    else return false;
    return true;
}

void sm_memlog_set_format(sm_memlog *log, sm_memlog_format format) {
    if (log) log->format = format;
}

void sm_memlog_close(sm_memlog *log) {
    if (!log) return;
    close(log->fd);
    free(log->path);
    free(log);
}

/* RFC 3339, UTC, millisecond precision: 2025-01-31T12:34:56.789Z */
static void format_timestamp(char *buf, size_t size) {
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    struct tm utc;
    gmtime_r(&now.tv_sec, &utc);
    char seconds[32];
    strftime(seconds, sizeof seconds, "%Y-%m-%dT%H:%M:%S", &utc);
    snprintf(buf, size, "%s.%03ldZ", seconds, now.tv_nsec / 1000000L);
}

static cJSON *modifications_json(const sm_result *result) {
    cJSON *array = cJSON_CreateArray();
    for (int32_t i = 0; array && i < result->n_events; i++) {
        const sm_event *event = &result->events[i];
        cJSON *item = cJSON_CreateObject();
        if (!item) break;
        sm_json_add_modification_fields(item, event);
        cJSON_AddItemToArray(array, item);
    }
    return array;
}

/*
 * The fusion record: num_models, fusion_mode, each model's mean confidence
 * in the kept tokens, the agreement summary, and every token where fewer
 * than half the models agreed (the original's "low agreement" events).
 */
static void add_fusion_fields(cJSON *json, const sm_gen_params *params, const sm_result *r) {
    cJSON_AddNumberToObject(json, "num_models", r->n_models);
    cJSON_AddStringToObject(json, "fusion_mode", sm_fusion_mode_name(params ? params->fusion.mode : SM_FUSION_CONFIDENCE));
    double conf[SM_MAX_MODELS] = {0}, top1 = 0, top3 = 0, js = 0;
    int32_t leading[SM_MAX_MODELS] = {0}, differs = 0;
    cJSON *low = cJSON_CreateArray();
    for (int32_t i = 0; i < r->n_tokens; i++) {
        const sm_fusion_info *f = &r->fusion[i];
        for (int32_t m = 0; m < r->n_models; m++) conf[m] += f->p_chosen[m];
        top1 += f->top1_agreement;
        top3 += f->top3_agreement;
        js += f->js_divergence;
        if (f->leading_model >= 0) leading[f->leading_model]++;
        differs += f->reference_differs;
        if (f->top3_agreement < 0.5f) {
            cJSON *e = cJSON_CreateObject();
            cJSON_AddNumberToObject(e, "token_idx", i);
            sm_json_add_float(e, "top1_agreement", f->top1_agreement);
            sm_json_add_float(e, "top3_agreement", f->top3_agreement);
            sm_json_add_float(e, "js_divergence", f->js_divergence);
            cJSON_AddNumberToObject(e, "leading_model", f->leading_model);
            cJSON_AddItemToArray(low, e);
        }
    }
    int32_t n = r->n_tokens > 0 ? r->n_tokens : 1;
    cJSON *models = cJSON_CreateArray();
    for (int32_t m = 0; m < r->n_models; m++) {
        cJSON *o = cJSON_CreateObject();
        sm_json_add_float(o, "avg_confidence", (float)(conf[m] / n));
        cJSON_AddNumberToObject(o, "tokens_led", leading[m]);
        cJSON_AddItemToArray(models, o);
    }
    cJSON_AddItemToObject(json, "models", models);
    cJSON *agreement = cJSON_CreateObject();
    sm_json_add_float(agreement, "mean_top1", (float)(top1 / n));
    sm_json_add_float(agreement, "mean_top3", (float)(top3 / n));
    sm_json_add_float(agreement, "mean_js_divergence", (float)(js / n));
    cJSON_AddNumberToObject(agreement, "reference_disagreements", differs);
    cJSON_AddItemToObject(json, "agreement", agreement);
    cJSON_AddItemToObject(json, "low_agreement_events", low);
}

/* ---- The original's record ---------------------------------------- */

/* Its name for a modification: a retraction was CRITICAL_RETRACT. */
static const char *original_mod_type(sm_mod_type mod) {
    return mod == SM_MOD_RETRACT ? "CRITICAL_RETRACT" : sm_mod_type_name(mod);
}

static cJSON *original_modification(int32_t token_idx, const char *mod_type, float confidence,
                                    const char *description) {
    cJSON *item = cJSON_CreateObject();
    if (!item) return NULL;
    cJSON_AddNumberToObject(item, "token_idx", token_idx);
    cJSON_AddStringToObject(item, "mod_type", mod_type);
    sm_json_add_float(item, "confidence", confidence);
    cJSON_AddStringToObject(item, "description", description);
    return item;
}

/* Up to SM_MAX_MODELS file names from "a.gguf,dir/b.gguf", in place. */
static int32_t split_model_names(char *paths, const char **names) {
    int32_t n = 0;
    for (char *save = NULL, *p = strtok_r(paths, ",", &save); p && n < SM_MAX_MODELS;
         p = strtok_r(NULL, ",", &save))
        names[n++] = sm_model_file_name(p);
    return n;
}

/* Its sample of the fusion: every kept token where fewer than half the
 * models had the token in their top 3, and every 50th token. */
static void add_fusion_samples(cJSON *array, const sm_result *r, int32_t i, const char *const *names,
                               float temperature) {
    const sm_fusion_info *f = &r->fusion[i];
    if (!(f->top3_agreement < 0.5f || i % 50 == 0)) return;
    char description[160];
    snprintf(description, sizeof description, "Leader: %s, Agreement: %.0f%%",
             f->leading_model >= 0 ? names[f->leading_model] : "ensemble", f->top3_agreement * 100.0);
    cJSON *item = original_modification(i, "FUSION_SAMPLE", f->p_fused, description);
    if (!item) return;
    cJSON_AddItemToObject(item, "fusion_data", sm_json_fusion_data_original(f, names, temperature));
    cJSON_AddItemToArray(array, item);
}

static cJSON *original_record_json(const char *model_path, const char *prompt,
                                   const sm_gen_params *params, const sm_result *result) {
    cJSON *json = cJSON_CreateObject();
    if (!json) return NULL;
    char timestamp[64];
    format_timestamp(timestamp, sizeof timestamp);
    cJSON_AddStringToObject(json, "timestamp", timestamp);
    sm_json_add_text(json, "prompt", prompt ? prompt : "", prompt ? strlen(prompt) : 0);
    sm_json_add_text(json, "response", result->text ? result->text : "", result->text ? result->text_len : 0);

    bool fused = result->n_models > 1 && result->fusion;
    char *paths = strdup(model_path ? model_path : "");
    const char *names[SM_MAX_MODELS];
    int32_t n_names = paths ? split_model_names(paths, names) : 0;
    for (int32_t m = n_names; m < SM_MAX_MODELS; m++) names[m] = "model";
    /* In the order they happened: the events in theirs, each kept token's
     * fusion sample after the events at or before it (the original logged
     * it after deciding on the token). */
    cJSON *mods = cJSON_AddArrayToObject(json, "modifications");
    int32_t next_sample = 0;
    float temperature = params ? params->sampling.temperature : result->final_temperature; /* in effect */
    for (int32_t k = 0; mods && k < result->n_events; k++) {
        const sm_event *e = &result->events[k];
        for (; fused && next_sample < e->token_index && next_sample < result->n_tokens; next_sample++)
            add_fusion_samples(mods, result, next_sample, names, temperature);
        cJSON_AddItemToArray(mods, original_modification(e->token_index, original_mod_type(e->mod), e->confidence,
                                                         e->description ? e->description : ""));
        temperature = e->temperature_after;
    }
    for (; fused && mods && next_sample < result->n_tokens; next_sample++)
        add_fusion_samples(mods, result, next_sample, names, temperature);
    free(paths);
    sm_json_add_float(json, "avg_confidence", result->avg_confidence);
    sm_json_add_float(json, "final_temperature", result->final_temperature);
    cJSON_AddNumberToObject(json, "retractions", result->n_retractions);
    if (fused) {
        cJSON_AddNumberToObject(json, "num_models", result->n_models);
        cJSON_AddStringToObject(json, "fusion_mode",
                                sm_fusion_mode_name(params ? params->fusion.mode : SM_FUSION_CONFIDENCE));
    }
    return json;
}

/* ---- The native record --------------------------------------------- */

static cJSON *record_json(const char *model_path, const char *prompt,
                          const sm_gen_params *params, const sm_result *result) {
    cJSON *json = cJSON_CreateObject();
    if (!json) return NULL;
    char timestamp[64];
    format_timestamp(timestamp, sizeof timestamp);

    /* The original's fields, in its order. */
    cJSON_AddStringToObject(json, "timestamp", timestamp);
    sm_json_add_text(json, "prompt", prompt ? prompt : "", prompt ? strlen(prompt) : 0);
    sm_json_add_text(json, "response", result->text ? result->text : "",
                     result->text ? result->text_len : 0);
    cJSON_AddItemToObject(json, "modifications", modifications_json(result));
    sm_json_add_float(json, "avg_confidence", result->avg_confidence);
    sm_json_add_float(json, "final_temperature", result->final_temperature);
    cJSON_AddNumberToObject(json, "retractions", result->n_retractions);

    sm_json_add_text(json, "model", model_path ? model_path : "", model_path ? strlen(model_path) : 0);
    if (params) cJSON_AddItemToObject(json, "parameters", sm_gen_params_to_cjson(params));
    cJSON_AddStringToObject(json, "stop_reason", sm_stop_reason_name(result->stop_reason));
    sm_json_add_result_counts(json, result);
    if (result->n_models > 1 && result->fusion) add_fusion_fields(json, params, result);
    return json;
}

/* True when the file is non-empty and its last byte is not a newline:
 * a previous writer died in the middle of its line. */
static bool ends_in_partial_line(const sm_memlog *log) {
    if (!log->can_read) return false;
    struct stat st;
    if (fstat(log->fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size == 0) return false;
    char last;
    if (pread(log->fd, &last, 1, st.st_size - 1) != 1) return false;
    return last != '\n';
}

static bool write_all(int fd, const char *data, size_t len) {
    while (len > 0) {
        ssize_t n = write(fd, data, len);
        if (n < 0) {
            if (errno == EINTR) continue;
            return false;
        }
        data += n;
        len -= (size_t)n;
    }
    return true;
}

sm_status sm_memlog_append(sm_memlog *log, const char *model_path, const char *prompt,
                           const sm_gen_params *params, const sm_result *result,
                           sm_error *err) {
    if (!log || !result) {
        set_error(err, SM_ERR_INVALID_ARGUMENT, "sm_memlog_append: %s is NULL",
                  !log ? "log" : "result");
        return SM_ERR_INVALID_ARGUMENT;
    }
    cJSON *json = log->format == SM_MEMLOG_ORIGINAL ? original_record_json(model_path, prompt, params, result)
                                                    : record_json(model_path, prompt, params, result);
    char *body = json ? cJSON_PrintUnformatted(json) : NULL;
    cJSON_Delete(json);
    if (!body) {
        set_error(err, SM_ERR_NO_MEMORY, "out of memory formatting a memory record");
        return SM_ERR_NO_MEMORY;
    }

    /* The separator, the record and its newline go out in one write(). */
    bool separate = ends_in_partial_line(log);
    size_t body_len = strlen(body);
    char *line = malloc(body_len + 3);
    if (!line) {
        free(body);
        set_error(err, SM_ERR_NO_MEMORY, "out of memory formatting a memory record");
        return SM_ERR_NO_MEMORY;
    }
    size_t len = 0;
    if (separate) line[len++] = '\n';
    memcpy(line + len, body, body_len);
    len += body_len;
    line[len++] = '\n';
    free(body);

    bool written = write_all(log->fd, line, len);
    free(line);
    if (!written) {
        set_error(err, SM_ERR_IO, "cannot write to memory file '%s': %s", log->path,
                  strerror(errno));
        return SM_ERR_IO;
    }
    if (fdatasync(log->fd) != 0 && errno != EINVAL && errno != EROFS) {
        set_error(err, SM_ERR_IO, "cannot sync memory file '%s': %s", log->path, strerror(errno));
        return SM_ERR_IO;
    }
    return SM_OK;
}
