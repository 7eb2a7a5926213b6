/* JSON helpers for the server: text that may not be valid UTF-8, floats
 * written short, and OpenAI-style error bodies. */
#ifndef SERVER_JSON_UTIL_H
#define SERVER_JSON_UTIL_H

#include <cjson/cJSON.h>

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A JSON string of bytes; bytes that are not well-formed UTF-8 become U+FFFD. */
cJSON *json_text(const char *bytes, size_t len);
void json_add_text(cJSON *object, const char *key, const char *bytes, size_t len);
/* A float as 7 significant digits (0.42f is 0.42); NaN and inf are null. */
cJSON *json_float(double value);
void json_add_float(cJSON *object, const char *key, double value);
/* The bytes as an array of numbers (OpenAI's "bytes" field). */
cJSON *json_byte_array(const char *bytes, size_t len);
/* Whether item is a number with an integer value that fits int32_t; checked
 * before any cast, since converting an out-of-range double is undefined. */
bool json_is_int32(const cJSON *item);
/* Whether item is a token id of a vocabulary of n_vocab: an int32 in [0, n_vocab). */
bool json_is_token_id(const cJSON *item, int32_t n_vocab);
/* Unformatted text of json; json is deleted. */
char *json_print_and_delete(cJSON *json);


/* {"error": {"message", "type", "param", "code"}} */
cJSON *json_error_object(const char *message, const char *type, const char *param, const char *code);

#endif
