#include "server/json_util.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Length of the well-formed UTF-8 sequence at s (1 to 4), or 0. */
static size_t utf8_sequence(const unsigned char *s, size_t n) {
    unsigned char c = s[0];
    if (c >= 0x01 && c < 0x80) return 1;
    size_t len;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) {
        len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else {
        return 0;
    }
    if (n < len || s[1] < lo || s[1] > hi) return 0;
    for (size_t i = 2; i < len; i++)
        if (s[i] < 0x80 || s[i] > 0xBF) return 0;
    return len;
}

static size_t utf8_expected_length(unsigned char c) {
    if (c >= 0xC2 && c <= 0xDF) return 2;
    if (c >= 0xE0 && c <= 0xEF) return 3;
    if (c >= 0xF0 && c <= 0xF4) return 4;
    return 1;
}

size_t utf8_complete_prefix(const char *s, size_t len) {
    /* Only the last 3 bytes can start a sequence that is still open. */
    for (size_t back = 1; back <= 3 && back <= len; back++) {
        unsigned char c = (unsigned char)s[len - back];
        if (c < 0x80) return len;
        if (c >= 0xC0) return utf8_expected_length(c) > back ? len - back : len;
    }
    return len;
}

cJSON *json_text(const char *bytes, size_t len) {
    if (!bytes) return cJSON_CreateString("");
    char *out = malloc(len * 3 + 1);
    if (!out) return NULL;
    const unsigned char *s = (const unsigned char *)bytes;
    size_t o = 0;
    for (size_t i = 0; i < len;) {
        size_t n = utf8_sequence(s + i, len - i);
        if (n == 0) {
            memcpy(out + o, "\xEF\xBF\xBD", 3);
            o += 3;
            i++;
        } else {
            memcpy(out + o, s + i, n);
            o += n;
            i += n;
        }
    }
    out[o] = '\0';
    cJSON *item = cJSON_CreateString(out);
    free(out);
    return item;
}

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
