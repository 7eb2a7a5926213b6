/* The JSONL memory file (src/memlog.c) and the JSON form of events
 * (src/events.c): records are complete lines, survive a truncated
 * predecessor, and unwritable paths fail with the path in the message. */
#include "testutil.h"

#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#define MAX_LINES 16

typedef struct temp_file {
    char dir[64];
    char path[128];
} temp_file;

static void temp_file_make(temp_file *t) {
    strcpy(t->dir, "/tmp/test_memlog.XXXXXX");
    assert_non_null(mkdtemp(t->dir));
    snprintf(t->path, sizeof t->path, "%s/memory.jsonl", t->dir);
}

static void temp_file_remove(temp_file *t) {
    unlink(t->path);
    rmdir(t->dir);
}

static char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    char *data = malloc(1 << 20);
    assert_non_null(data);
    *len = fread(data, 1, (1 << 20) - 1, f);
    data[*len] = '\0';
    fclose(f);
    return data;
}

/* Splits the file's text into lines; every line must end in '\n'. */
static int split_lines(char *data, size_t len, char *lines[MAX_LINES]) {
    assert_true(len > 0);
    assert_int_equal(data[len - 1], '\n');
    int n = 0;
    for (char *line = data; *line && n < MAX_LINES;) {
        char *nl = strchr(line, '\n');
        *nl = '\0';
        lines[n++] = line;
        line = nl + 1;
    }
    return n;
}

static void write_raw(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static sm_event sample_retraction(void) {
    sm_event event;
    memset(&event, 0, sizeof event);
    event.type = SM_EVENT_RETRACTION;
    event.mod = SM_MOD_RETRACT;
    event.token_index = 17;
    event.confidence = 0.25f;
    event.description = "critical confidence: retract 3 tokens";
    event.source = "policy";
    event.temperature_before = 0.7f;
    event.temperature_after = 0.98f;
    event.repeat_penalty_before = 1.1f;
    event.repeat_penalty_after = 1.1f;
    event.n_removed = 3;
    return event;
}

static sm_result sample_result(char *text, sm_event *events, int32_t n_events) {
    sm_result result;
    memset(&result, 0, sizeof result);
    result.text = text;
    result.text_len = strlen(text);
    result.n_tokens = 12;
    result.n_prompt_tokens = 5;
    result.stop_reason = SM_STOP_N_PREDICT;
    result.n_retractions = 1;
    result.n_sampled = 15;
    result.n_decoded = 15;
    result.avg_confidence = 0.5f;
    result.final_temperature = 0.98f;
    result.final_repeat_penalty = 1.1f;
    result.t_prompt_ms = 1.5;
    result.t_generate_ms = 10.0;
    result.events = events;
    result.n_events = n_events;
    return result;
}

static void append_or_fail(sm_memlog *log, const char *prompt, const sm_gen_params *params,
                           const sm_result *result) {
    sm_error err = {0};
    sm_status st = sm_memlog_append(log, "models/x.gguf", prompt, params, result, &err);
    if (st != SM_OK) fail_msg("append failed: %s", err.message);
}

static const char *string_field(const cJSON *json, const char *key) {
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(json, key);
    if (!cJSON_IsString(item)) fail_msg("field '%s' is missing or not a string", key);
    return item->valuestring;
}

static double number_field(const cJSON *json, const char *key) {
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(json, key);
    if (!cJSON_IsNumber(item)) fail_msg("field '%s' is missing or not a number", key);
    return item->valuedouble;
}

static void assert_record_fields(const cJSON *record) {
    static const char *const original[] = {"timestamp", "prompt", "response", "modifications",
                                           "avg_confidence", "final_temperature", "retractions"};
    static const char *const added[] = {"model", "parameters", "n_prompt_tokens", "n_tokens",
                                        "n_sampled", "n_decoded", "n_backtracks", "stop_reason",
                                        "timings"};
    for (size_t i = 0; i < sizeof original / sizeof *original; i++)
        if (!cJSON_HasObjectItem(record, original[i])) fail_msg("missing field %s", original[i]);
    for (size_t i = 0; i < sizeof added / sizeof *added; i++)
        if (!cJSON_HasObjectItem(record, added[i])) fail_msg("missing field %s", added[i]);
    /* RFC 3339 UTC: 2025-01-31T12:34:56.789Z */
    const char *ts = string_field(record, "timestamp");
    assert_int_equal(strlen(ts), 24);
    assert_int_equal(ts[10], 'T');
    assert_int_equal(ts[23], 'Z');
}

static void test_three_appends_are_three_valid_lines(void **state) {
    temp_file t;
    temp_file_make(&t);
    sm_error err = {0};
    sm_memlog *log = sm_memlog_open(t.path, &err);
    assert_non_null(log);

    sm_gen_params params = sm_gen_default_params();
    params.sampling.seed = 1234;
    sm_event event = sample_retraction();
    const char *prompts[3] = {"plain prompt", "He said \"hi\"\nthen\tleft\\ \xC3\xA9t\xC3\xA9 \xE2\x9C\x93",
                              "third"};
    char *texts[3] = {"Once upon a time.", "Line one\nLine \"two\" caf\xC3\xA9", ""};
    for (int i = 0; i < 3; i++) {
        sm_result result = sample_result(texts[i], &event, i == 1 ? 1 : 0);
        append_or_fail(log, prompts[i], &params, &result);
    }
    sm_memlog_close(log);

    size_t len;
    char *data = read_file(t.path, &len);
    char *lines[MAX_LINES];
    assert_int_equal(split_lines(data, len, lines), 3);
    for (int i = 0; i < 3; i++) {
        cJSON *record = cJSON_Parse(lines[i]);
        if (!record) fail_msg("line %d is not JSON: %s", i + 1, lines[i]);
        assert_record_fields(record);
        assert_string_equal(string_field(record, "prompt"), prompts[i]);
        assert_string_equal(string_field(record, "response"), texts[i]);
        assert_string_equal(string_field(record, "model"), "models/x.gguf");
        assert_string_equal(string_field(record, "stop_reason"), sm_stop_reason_name(SM_STOP_N_PREDICT));
        assert_int_equal((int)number_field(record, "retractions"), 1);
        assert_int_equal((int)number_field(record, "n_tokens"), 12);
        const cJSON *p = cJSON_GetObjectItemCaseSensitive(record, "parameters");
        assert_int_equal((int)number_field(p, "seed"), 1234);
        assert_true(cJSON_HasObjectItem(p, "temperature"));
        assert_true(cJSON_HasObjectItem(p, "confidence_threshold"));
        const cJSON *timings = cJSON_GetObjectItemCaseSensitive(record, "timings");
        assert_true(number_field(timings, "tokens_per_s") > 1000.0);
        const cJSON *mods = cJSON_GetObjectItemCaseSensitive(record, "modifications");
        assert_int_equal(cJSON_GetArraySize(mods), i == 1 ? 1 : 0);
        if (i == 1) {
            const cJSON *mod = cJSON_GetArrayItem(mods, 0);
            assert_int_equal((int)number_field(mod, "token_index"), 17);
            assert_false(cJSON_HasObjectItem(mod, "token_idx")); /* once, not twice */
            assert_string_equal(string_field(mod, "mod_type"), sm_mod_type_name(SM_MOD_RETRACT));
            assert_true(number_field(mod, "confidence") == 0.25);
            assert_string_equal(string_field(mod, "description"), event.description);
            assert_true(number_field(mod, "temperature_after") == 0.98);
            assert_int_equal((int)number_field(mod, "n_removed"), 3);
        }
        cJSON_Delete(record);
    }
    free(data);
    temp_file_remove(&t);
}

/* Keys of a JSON object, in order, joined by ','. */
static void keys_of(const cJSON *object, char *out, size_t size) {
    out[0] = '\0';
    for (const cJSON *item = object->child; item; item = item->next)
        snprintf(out + strlen(out), size - strlen(out), "%s%s", out[0] ? "," : "", item->string);
}

/* --memory-format original: exactly the Rust original's record: its keys
 * in its order, a retraction named CRITICAL_RETRACT, and with two models a
 * FUSION_SAMPLE (with fusion_data naming the models by file name) at every
 * kept token whose top-3 agreement is below 0.5 and at every 50th token,
 * each after the modifications of its token. */
static void test_original_format_is_the_rust_record(void **state) {
    temp_file t;
    temp_file_make(&t);
    sm_error err = {0};
    sm_memlog *log = sm_memlog_open(t.path, &err);
    assert_non_null(log);
    sm_memlog_format format;
    assert_true(sm_memlog_format_from_name("original", &format));
    assert_false(sm_memlog_format_from_name("Original", &format));
    sm_memlog_set_format(log, SM_MEMLOG_ORIGINAL);

    sm_gen_params params = sm_gen_default_params();
    params.fusion.mode = SM_FUSION_HARMONY;
    sm_event events[2] = {sample_retraction(), sample_retraction()};
    events[0].type = SM_EVENT_MODIFICATION;
    events[0].mod = SM_MOD_SHARPEN;
    events[0].token_index = 3;
    events[0].description = "sharpen";
    sm_result result = sample_result("fused", events, 2);
    result.n_tokens = 60;
    result.n_models = 2;
    sm_fusion_info fusion[60];
    memset(fusion, 0, sizeof fusion);
    for (int i = 0; i < 60; i++) {
        fusion[i].n_models = 2;
        fusion[i].n_participating = 2;
        fusion[i].top3_agreement = (i == 3 || i == 20) ? 0.0f : 1.0f;
        fusion[i].leading_model = i == 20 ? -1 : 1;
        fusion[i].p_top1[0] = 0.5f;
        fusion[i].p_top1[1] = 0.75f;
        fusion[i].p_fused = 0.625f;
        fusion[i].js_divergence = 0.25f;
    }
    fusion[20].n_participating = 1;
    result.fusion = fusion;
    sm_status st = sm_memlog_append(log, "dir/a.gguf,b.gguf", "p", &params, &result, &err);
    if (st != SM_OK) fail_msg("append failed: %s", err.message);
    sm_memlog_close(log);

    size_t len;
    char *data = read_file(t.path, &len);
    cJSON *record = cJSON_Parse(data);
    assert_non_null(record);
    char keys[512];
    keys_of(record, keys, sizeof keys);
    assert_string_equal(keys, "timestamp,prompt,response,modifications,avg_confidence,final_temperature,"
                              "retractions,num_models,fusion_mode");
    assert_string_equal(string_field(record, "fusion_mode"), "harmony");
    assert_int_equal((int)number_field(record, "num_models"), 2);
    const cJSON *mods = cJSON_GetObjectItemCaseSensitive(record, "modifications");
    /* token 0 (every 50th), SHARPEN at 3 then token 3's sample (agreement
     * 0), the retraction back to 17, token 20 (agreement 0), token 50. */
    static const struct { int idx; const char *type; } want[] = {
        {0, "FUSION_SAMPLE"}, {3, "SHARPEN"}, {3, "FUSION_SAMPLE"}, {17, "CRITICAL_RETRACT"},
        {20, "FUSION_SAMPLE"}, {50, "FUSION_SAMPLE"}};
    assert_int_equal(cJSON_GetArraySize(mods), 6);
    for (int k = 0; k < 6; k++) {
        const cJSON *mod = cJSON_GetArrayItem(mods, k);
        assert_int_equal((int)number_field(mod, "token_idx"), want[k].idx);
        assert_string_equal(string_field(mod, "mod_type"), want[k].type);
        keys_of(mod, keys, sizeof keys);
        bool sample = strcmp(want[k].type, "FUSION_SAMPLE") == 0;
        assert_string_equal(keys, sample ? "token_idx,mod_type,confidence,description,fusion_data"
                                         : "token_idx,mod_type,confidence,description");
        if (!sample) continue;
        assert_true(number_field(mod, "confidence") == 0.625);
        const cJSON *fd = cJSON_GetObjectItemCaseSensitive(mod, "fusion_data");
        const cJSON *conf = cJSON_GetObjectItemCaseSensitive(fd, "model_confidences");
        assert_string_equal(cJSON_GetArrayItem(cJSON_GetArrayItem(conf, 0), 0)->valuestring, "a.gguf");
        assert_true(cJSON_GetArrayItem(cJSON_GetArrayItem(conf, 1), 1)->valuedouble == 0.75);
        assert_string_equal(string_field(fd, "leading_model"), want[k].idx == 20 ? "ensemble" : "b.gguf");
        assert_int_equal((int)number_field(fd, "num_abstentions"), want[k].idx == 20 ? 1 : 0);
        assert_true(number_field(fd, "harmony_score") == 0.75);
        /* the temperature in effect: the sharpen event's result after it */
        double t_in_effect = want[k].idx == 0 ? (double)params.sampling.temperature : 0.98; /* after SHARPEN */
        assert_true(fabs(number_field(fd, "adaptive_temp") - t_in_effect) < 1e-6);
        char description[64];
        snprintf(description, sizeof description, "Leader: %s, Agreement: %s",
                 want[k].idx == 20 ? "ensemble" : "b.gguf", want[k].idx == 3 || want[k].idx == 20 ? "0%" : "100%");
        assert_string_equal(string_field(mod, "description"), description);
    }
    cJSON_Delete(record);
    free(data);
    temp_file_remove(&t);
}

static void test_truncated_last_line_is_kept_and_new_record_starts_a_line(void **state) {
    temp_file t;
    temp_file_make(&t);
    const char *before = "{\"timestamp\":\"2025-01-01T00:00:00.000Z\",\"prompt\":\"a\"}\n"
                         "{\"timestamp\":\"2025-01-01T00:00:01.000Z\",\"pro";
    write_raw(t.path, before);

    sm_error err = {0};
    sm_memlog *log = sm_memlog_open(t.path, &err);
    assert_non_null(log);
    sm_gen_params params = sm_gen_default_params();
    sm_result result = sample_result("after", NULL, 0);
    append_or_fail(log, "p", &params, &result);
    append_or_fail(log, "q", &params, &result);
    sm_memlog_close(log);

    size_t len;
    char *data = read_file(t.path, &len);
    assert_memory_equal(data, before, strlen(before)); /* earlier bytes untouched */
    char *lines[MAX_LINES];
    assert_int_equal(split_lines(data, len, lines), 4);
    cJSON *first = cJSON_Parse(lines[0]);
    assert_non_null(first);
    cJSON_Delete(first);
    assert_null(cJSON_Parse(lines[1])); /* the truncated record, as it was */
    for (int i = 2; i < 4; i++) {
        cJSON *record = cJSON_Parse(lines[i]);
        if (!record) fail_msg("line %d is not JSON: %s", i + 1, lines[i]);
        assert_string_equal(string_field(record, "prompt"), i == 2 ? "p" : "q");
        cJSON_Delete(record);
    }
    free(data);
    temp_file_remove(&t);
}

static void test_unwritable_path_fails_with_io_error_naming_it(void **state) {
    const char *path = "/nonexistent-dir-of-test-memlog/sub/memory.jsonl";
    sm_error err = {0};
    sm_memlog *log = sm_memlog_open(path, &err);
    assert_null(log);
    assert_int_equal(err.status, SM_ERR_IO);
    if (!strstr(err.message, path)) fail_msg("message does not name the path: %s", err.message);

    /* A directory cannot be appended to either. */
    memset(&err, 0, sizeof err);
    assert_null(sm_memlog_open("/tmp", &err));
    assert_int_equal(err.status, SM_ERR_IO);
    assert_non_null(strstr(err.message, "/tmp"));
}

static void test_empty_path_is_an_invalid_argument(void **state) {
    sm_error err = {0};
    assert_null(sm_memlog_open("", &err));
    assert_int_equal(err.status, SM_ERR_INVALID_ARGUMENT);
    memset(&err, 0, sizeof err);
    assert_null(sm_memlog_open(NULL, &err));
    assert_int_equal(err.status, SM_ERR_INVALID_ARGUMENT);
}

/* A response cut inside a UTF-8 sequence still gives valid JSON, and its
 * exact bytes are kept next to it. */
static void test_split_utf8_response_keeps_exact_bytes(void **state) {
    temp_file t;
    temp_file_make(&t);
    sm_error err = {0};
    sm_memlog *log = sm_memlog_open(t.path, &err);
    assert_non_null(log);
    char text[] = "caf\xC3"; /* the second byte of "é" never came */
    sm_result result = sample_result(text, NULL, 0);
    append_or_fail(log, "p", NULL, &result);
    sm_memlog_close(log);

    size_t len;
    char *data = read_file(t.path, &len);
    cJSON *record = cJSON_Parse(data);
    assert_non_null(record);
    assert_string_equal(string_field(record, "response"), "caf\xEF\xBF\xBD");
    const cJSON *bytes = cJSON_GetObjectItemCaseSensitive(record, "response_bytes");
    assert_int_equal(cJSON_GetArraySize(bytes), 4);
    assert_int_equal((int)cJSON_GetArrayItem(bytes, 3)->valuedouble, 0xC3);
    assert_false(cJSON_HasObjectItem(record, "parameters"));
    cJSON_Delete(record);
    free(data);
    temp_file_remove(&t);
}

static void test_token_event_json_carries_signals(void **state) {
    sm_event event;
    memset(&event, 0, sizeof event);
    event.type = SM_EVENT_TOKEN;
    event.token_index = 4;
    event.token = 321;
    event.piece = " \"quoted\"\n";
    event.description = "";
    event.signals.p_chosen = 0.42f;
    event.signals.p_top1 = 0.5f;
    event.signals.p_top2 = 0.2f;
    event.signals.entropy = 1.25f;
    event.signals.logit = -3.5f;
    event.signals.p_sampled = 0.6f;
    event.temperature_before = 0.7f;
    event.repeat_penalty_before = 1.1f;
    char *text = sm_event_to_json(&event);
    assert_non_null(text);
    assert_null(strchr(text, '\n')); /* one line */
    cJSON *json = cJSON_Parse(text);
    assert_non_null(json);
    assert_string_equal(string_field(json, "type"), "token");
    assert_int_equal((int)number_field(json, "index"), 4);
    assert_int_equal((int)number_field(json, "token"), 321);
    assert_string_equal(string_field(json, "piece"), event.piece);
    assert_true(number_field(json, "p_chosen") == 0.42);
    assert_true(number_field(json, "temperature") == 0.7);
    assert_true(number_field(json, "entropy") == 1.25);
    cJSON_Delete(json);
    free(text);
}

static void test_token_event_json_has_top_candidates_and_fusion(void **state) {
    sm_candidate top[2] = {{.token = 7, .logit = 3.0f, .prob = 0.75f}, {.token = 9, .logit = 1.0f, .prob = 0.125f}};
    sm_fusion_info fusion;
    memset(&fusion, 0, sizeof fusion);
    fusion.n_models = 2;
    fusion.top1_agreement = 0.5f;
    fusion.leading_model = 1;
    fusion.p_chosen[0] = 0.25f;
    fusion.p_chosen[1] = 0.75f;
    sm_event event;
    memset(&event, 0, sizeof event);
    event.type = SM_EVENT_TOKEN;
    event.piece = "x";
    event.top = top;
    event.n_top = 2;
    event.fusion = &fusion;
    char *text = sm_event_to_json(&event);
    cJSON *json = cJSON_Parse(text);
    assert_non_null(json);
    const cJSON *candidates = cJSON_GetObjectItemCaseSensitive(json, "top");
    assert_int_equal(cJSON_GetArraySize(candidates), 2);
    assert_int_equal((int)number_field(cJSON_GetArrayItem(candidates, 1), "token"), 9);
    assert_true(number_field(cJSON_GetArrayItem(candidates, 0), "prob") == 0.75);
    const cJSON *f = cJSON_GetObjectItemCaseSensitive(json, "fusion");
    assert_int_equal((int)number_field(f, "n_models"), 2);
    assert_int_equal((int)number_field(f, "leading_model"), 1);
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(f, "p_chosen");
    assert_int_equal(cJSON_GetArraySize(p), 2);
    assert_true(cJSON_GetArrayItem(p, 1)->valuedouble == 0.75);
    cJSON_Delete(json);
    free(text);

    /* Without them, neither key appears. */
    event.top = NULL;
    event.n_top = 0;
    event.fusion = NULL;
    text = sm_event_to_json(&event);
    json = cJSON_Parse(text);
    assert_false(cJSON_HasObjectItem(json, "top"));
    assert_false(cJSON_HasObjectItem(json, "fusion"));
    cJSON_Delete(json);
    free(text);
}

static void test_retraction_event_json_has_modification_fields(void **state) {
    sm_event event = sample_retraction();
    char *text = sm_event_to_json(&event);
    cJSON *json = cJSON_Parse(text);
    assert_non_null(json);
    assert_string_equal(string_field(json, "type"), "retraction");
    assert_string_equal(string_field(json, "mod_type"), sm_mod_type_name(SM_MOD_RETRACT));
    assert_string_equal(string_field(json, "source"), "policy");
    assert_int_equal((int)number_field(json, "n_removed"), 3);
    assert_int_equal((int)number_field(json, "token_index"), 17);
    assert_true(number_field(json, "repeat_penalty_before") == 1.1);
    cJSON_Delete(json);
    free(text);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_three_appends_are_three_valid_lines),
        cmocka_unit_test(test_original_format_is_the_rust_record),
        cmocka_unit_test(test_truncated_last_line_is_kept_and_new_record_starts_a_line),
        cmocka_unit_test(test_unwritable_path_fails_with_io_error_naming_it),
        cmocka_unit_test(test_empty_path_is_an_invalid_argument),
        cmocka_unit_test(test_split_utf8_response_keeps_exact_bytes),
        cmocka_unit_test(test_token_event_json_carries_signals),
        cmocka_unit_test(test_token_event_json_has_top_candidates_and_fusion),
        cmocka_unit_test(test_retraction_event_json_has_modification_fields),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
