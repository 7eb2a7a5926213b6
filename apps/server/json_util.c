#include "server/json_util.h"

#include "json_forms.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

cJSON *json_text(const char *bytes, size_t len) { return sm_json_text(bytes, len); }

void json_add_text(cJSON *object, const char *key, const char *bytes, size_t len) {
    cJSON_AddItemToObject(object, key, json_text(bytes, len));
}

static double short_double(double value) {
    char buf[32];
    snprintf(buf, sizeof buf, "%.7g", value);
    return strtod(buf, NULL);
}

cJSON *json_float(double value) {
    if (!isfinite(value)) return cJSON_CreateNull();
    return cJSON_CreateNumber(short_double(value));
}

void json_add_float(cJSON *object, const char *key, double value) {
    cJSON_AddItemToObject(object, key, json_float(value));
}

cJSON *json_byte_array(const char *bytes, size_t len) {
    cJSON *array = cJSON_CreateArray();
    for (size_t i = 0; array && i < len; i++)
        cJSON_AddItemToArray(array, cJSON_CreateNumber((unsigned char)bytes[i]));
    return array;
}

char *json_print_and_delete(cJSON *json) {
    char *text = json ? cJSON_PrintUnformatted(json) : NULL;
    cJSON_Delete(json);
    return text;
}

cJSON *json_error_object(const char *message, const char *type, const char *param, const char *code) {
    cJSON *root = cJSON_CreateObject();
    cJSON *error = cJSON_AddObjectToObject(root, "error");
    cJSON_AddItemToObject(error, "message", json_text(message, strlen(message)));
    cJSON_AddStringToObject(error, "type", type);
    if (param && *param) cJSON_AddStringToObject(error, "param", param);
    else cJSON_AddNullToObject(error, "param");
    if (code) cJSON_AddStringToObject(error, "code", code);
    else cJSON_AddNullToObject(error, "code");
    return root;
}

bool json_is_int32(const cJSON *item) {
    if (!cJSON_IsNumber(item)) return false;
    double v = item->valuedouble;
    return isfinite(v) && v >= (double)INT32_MIN && v <= (double)INT32_MAX && v == floor(v);
}

bool json_is_token_id(const cJSON *item, int32_t n_vocab) {
    return json_is_int32(item) && item->valuedouble >= 0 && item->valuedouble < n_vocab;
}
