/* Prompt files: plain lines or JSONL. */
#include "eval/prompts.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

static bool is_blank(const char *s) {
    while (isspace((unsigned char)*s)) s++;
    return *s == '\0';
}

static void chomp(char *s) {
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == '\n' || s[n - 1] == '\r')) s[--n] = '\0';
}

static int add_prompt(eval_prompt_set *set, int32_t *cap, const char *text, const char *reference, int32_t line) {
    if (set->n == *cap) {
        int32_t c = *cap ? *cap * 2 : 64;
        eval_prompt *items = realloc(set->items, sizeof *items * (size_t)c);
        if (!items) return -1;
        set->items = items;
        *cap = c;
    }
    eval_prompt *p = &set->items[set->n];
    p->text = strdup(text);
    p->reference = reference ? strdup(reference) : NULL;
    p->line = line;
    if (!p->text || (reference && !p->reference)) {
        free(p->text);
        free(p->reference);
        return -1;
    }
    set->n++;
    if (reference) set->n_with_reference++;
    return 0;
}

/* One JSONL line: {"prompt": "...", "reference": "..."}. */
static int parse_json_line(const char *path, int32_t line_no, const char *line, eval_prompt_set *set,
                           int32_t *cap, char *err, size_t err_size) {
    cJSON *obj = cJSON_Parse(line);
    const cJSON *prompt = obj ? cJSON_GetObjectItemCaseSensitive(obj, "prompt") : NULL;
    const cJSON *reference = obj ? cJSON_GetObjectItemCaseSensitive(obj, "reference") : NULL;
    int rc = -1;
    if (!cJSON_IsObject(obj))
        snprintf(err, err_size, "%s:%d: not a JSON object (a JSONL prompt file has one object per line)", path,
                 line_no);
    else if (!cJSON_IsString(prompt) || !prompt->valuestring[0])
        snprintf(err, err_size, "%s:%d: \"prompt\" must be a non-empty string", path, line_no);
    else if (reference && !cJSON_IsString(reference) && !cJSON_IsNull(reference))
        snprintf(err, err_size, "%s:%d: \"reference\" must be a string", path, line_no);
    else if ((rc = add_prompt(set, cap, prompt->valuestring,
                              cJSON_IsString(reference) ? reference->valuestring : NULL, line_no)) != 0)
        snprintf(err, err_size, "out of memory reading %s", path);
    cJSON_Delete(obj);
    return rc;
}

int eval_prompts_load(const char *path, int32_t limit, eval_prompt_set *set, char *err, size_t err_size) {
    *set = (eval_prompt_set){0};
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, err_size, "cannot open the prompt file '%s': %s", path, strerror(errno));
        return -1;
    }
    char *line = NULL;
    size_t line_cap = 0;
    int32_t cap = 0, line_no = 0;
    int format = -1; /* 0 plain, 1 JSONL: decided by the first non-blank line */
    int rc = 0;
    while (rc == 0 && (limit <= 0 || set->n < limit) && getline(&line, &line_cap, f) >= 0) {
        line_no++;
        chomp(line);
        if (is_blank(line)) continue;
        if (format < 0) format = line[strspn(line, " \t")] == '{';
        if (format == 1) {
            rc = parse_json_line(path, line_no, line, set, &cap, err, err_size);
        } else if (line[0] != '#' && add_prompt(set, &cap, line, NULL, line_no) != 0) {
            snprintf(err, err_size, "out of memory reading %s", path);
            rc = -1;
        }
    }
    if (rc == 0 && ferror(f)) {
        snprintf(err, err_size, "cannot read the prompt file '%s': %s", path, strerror(errno));
        rc = -1;
    }
    free(line);
    fclose(f);
    if (rc == 0 && set->n == 0) {
        snprintf(err, err_size, "the prompt file '%s' holds no prompt", path);
        rc = -1;
    }
    if (rc != 0) eval_prompts_free(set);
    return rc;
}

void eval_prompts_free(eval_prompt_set *set) {
    for (int32_t i = 0; i < set->n; i++) {
        free(set->items[i].text);
        free(set->items[i].reference);
    }
    free(set->items);
    *set = (eval_prompt_set){0};
}
